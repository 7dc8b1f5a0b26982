"""What each `trl-sso` command runs, as library functions (as TRL keeps its own `scripts/`): `generate`, `train`,
`reward`, `iterate` and `pipeline`. The CLI only parses options into the dataclasses these take and calls them."""
