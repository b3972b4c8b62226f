"""The Hugging Face ``Trainer`` integration: the callback, its emergency stop, the setups it refuses or warns
about, and two-phase (asynchronous) saves in ``asyncsave/``."""
