"""One module per `ernie-style` subcommand; each defines `register(subparsers)`."""
