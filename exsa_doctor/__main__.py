"""`python -m exsa_doctor` runs the command-line interface."""

from exsa_doctor.launch import main

main()
