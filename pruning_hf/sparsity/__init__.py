"""Pure tensor maths, no models: masks and patterns, layer allocation, scores, refinement, input
statistics, Hessian factors, compression codecs."""
