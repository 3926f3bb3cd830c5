"""The ``pec-renewal`` command."""
