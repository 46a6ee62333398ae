"""The stand-in engine shipped for the demo and the tests, and its GGUF maker."""
