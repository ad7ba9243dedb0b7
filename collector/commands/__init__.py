"""One module per ``recp`` subcommand (see :mod:`collector.cli`)."""
