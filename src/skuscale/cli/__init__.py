"""Command-line interface (Typer): thin wrappers that parse, call the library and summarise."""
