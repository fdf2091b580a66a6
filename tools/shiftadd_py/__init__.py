"""Python helpers for the shiftadd engine (training / fixture generation)."""
