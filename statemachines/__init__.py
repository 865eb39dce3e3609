"""Pure job logic: no I/O, no trio. Events go in; new states and effects, as data, come out."""
