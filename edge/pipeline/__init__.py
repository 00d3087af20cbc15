"""The edge pipeline: capture threads, synchroniser, tracker and the run loop of `vrclip-edge run`."""
