"""Fleet operations: shipping a bundle to many devices over MQTT + HTTP (see docs/fleet.md)."""
