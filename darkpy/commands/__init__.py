"""The commands of `darkpy`: one module per command, each with `add_arguments(parser)` and `run(args) -> int`
(darkpy.cli imports a module by name when its command runs); `common` holds what they share."""
