"""`python -m exsa_doctor` runs the command-line interface."""

from exsa_doctor.cli import main

main()
