"""Alternate dqf plugins; each subpackage registers through its own `dqf` entry point, as an outside package would."""
