"""HTTP API, web page and command line for asking questions (issues 3, 4)."""
