"""Thin command-line front ends; each module has ``main(argv)``."""
