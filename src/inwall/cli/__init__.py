"""Command-line programs: each subcommand is a thin shell over a library object."""
