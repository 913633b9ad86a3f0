"""Issue 9, hostile input: property-based fuzzing of every handler's t_param and of the control socket."""
