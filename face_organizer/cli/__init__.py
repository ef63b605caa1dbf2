"""Command-line front ends. Only this layer reads ``sys.argv`` and the environment."""
