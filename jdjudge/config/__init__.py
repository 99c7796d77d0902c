"""The configuration: one typed schema (every key declared once), presets for the shipped
configs, the ConfigDict round trip and the command-line loader."""
