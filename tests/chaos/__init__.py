"""Issue 9: the reliability campaign: faults, restarts and hostile input against real daemons."""
