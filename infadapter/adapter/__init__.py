"""The adapter: the control loop, the one runner for every backend, decision records, the run state on
disk and what ``status`` reads back."""
