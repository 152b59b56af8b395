"""The command-line application: thin Hydra entry points over the library, and the one task
wrapper they share (environment, resolvers, config checks, user errors, exit codes, run dir)."""
