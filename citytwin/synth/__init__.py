"""The virtual city: a deterministic, physically consistent city of any size, from one seed."""
