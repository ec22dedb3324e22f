"""The sans-IO core: bytes in, usage out. No framework, exporter or driver is imported here."""
