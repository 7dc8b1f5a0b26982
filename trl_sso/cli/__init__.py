"""The `trl-sso` command. Sub-commands parse their options and call the library; heavy libraries load only when a
sub-command runs, so `trl-sso --help` answers at once."""
