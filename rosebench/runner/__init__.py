"""The Hydra-configured runner: settings from the config, passes, results folder, console summary."""
