"""File formats, one module each, named for what the file holds: hloc's ``features.h5`` /
``matches.h5`` (:mod:`.hloc`), the pair-match store ``pair_matches.h5`` (:mod:`.pair_store`),
the correspondences of ``l2m match``, ``correspondences.h5`` (:mod:`.correspondences`), hloc's pairs file
(:mod:`.pairs_txt`), the "l2m-synth" training pairs (:mod:`.synth_pairs`) and camera poses of
a COLMAP model (:mod:`.colmap_model`). Keypoints cross every reader and writer in COLMAP
pixel coordinates (centres at i + 0.5); files in hloc's convention convert on the way."""
