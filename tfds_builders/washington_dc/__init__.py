"""Washington DC Mall (HYDICE, 191 bands), AnyBand-Diff's protocol."""
