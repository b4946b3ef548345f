"""One module per command: what `clipdebias <command>` runs, from resolved options to written files."""
