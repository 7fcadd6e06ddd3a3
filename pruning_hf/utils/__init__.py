"""Infrastructure every layer uses: argument checks, atomic file writes, memory readings."""
