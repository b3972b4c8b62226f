"""Everything that asks the operating system something platform-specific: signals and Windows console events."""
