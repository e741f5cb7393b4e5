"""kombu transports shipped with decortask (the embedded SQLite broker)."""
