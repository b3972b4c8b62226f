"""Running without anyone watching: the supervisor, autostart at boot, notifications and ``--inject``."""
