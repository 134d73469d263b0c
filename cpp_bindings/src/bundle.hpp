// Bundle folders as written by fgresq_sdk.bundle: model.json + the files it lists, each with its sha256.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "niqe.hpp"
#include "preprocess.hpp"

namespace fgresq::detail {

struct BundleInfo {
  std::string root;
  std::string name;
  std::string precision;
  std::string encoder_path;  // as shown in messages (<dir>/encoder.onnx)
  std::string heads_path;
  PreprocessSpec pre;  // model.json "preprocess" (docs/preprocess-spec.md); pre.size is the input side
  int feature_dim = -1;  // manifest "feature_dim" (D), -1 if absent
  // config "vision_cfg" "kind" is "conv-stats" (model.ConvStatsTower, the embedded default): it picks the default
  // encoder batch (fgresq.cpp, as fgresq_sdk/scorer.py default_batch_size)
  bool conv_stats = false;
  // model.json "naturalness" (fgresq_sdk/naturalness.py): the score term, its pristine file read, verified
  // and parsed; empty when the bundle has none (scores are then the encoder's own).
  std::optional<niqe::Term> naturalness;
};

// A bundle whose manifest passed validation, with the bytes of the two files this library opens.
// The bytes are the ones that were hashed: hand them to ONNX Runtime / the npz parser, never reopen the
// file (it could have been swapped since).
struct LoadedBundle {
  BundleInfo info;
  std::vector<uint8_t> encoder_bytes;
  std::vector<uint8_t> heads_bytes;
};

// The schema of fgresq_sdk.bundle.validate_manifest + load_bundle (the same rules, order and wording):
//  - model.json is a JSON object with "format": "fgresq-bundle" and "format_version" the JSON integer 1
//    (an integer > 1: UNSUPPORTED, "newer than this SDK supports"; not an integer: "must be an integer");
//  - "files" maps role -> {"path": non-empty string, "sha256": 64 lowercase hex, "bytes": optional int >= 0},
//    with roles "encoder" and "heads" required; "config" and "preprocess" are objects; preprocess "size"
//    (a positive integer), "mean" and "std" (3 numbers, std > 0) when present; "precision" a string;
//  - preprocess "resize" {"method", "size": [w, h]} and "crop" {"method": "center", "size": [w, h]}, each
//    optional (docs/preprocess-spec.md): an unknown method is UNSUPPORTED; a crop needs a resize it fits in,
//    and the tensor after them must be size×size. Neither key: the legacy form (bilinear-antialias to size×size);
//  - every path is relative ('/' separators; no leading '/', drive, backslash, NUL, or empty/'.'/'..' part)
//    and, with symlinks resolved, lies inside the resolved bundle folder; it must be a regular file;
//  - the optional "naturalness" section (fgresq_sdk.naturalness.validate_section): an object with "method"
//    "niqe-log-distance", "pristine" naming a role listed in "files", finite numbers "weight" >= 0, "scale" > 0
//    and "offset" (other keys, such as "fit", ignored).
// Only "encoder", "heads" and, with a naturalness section, its pristine file are read (each once, into
// memory); with verify their sha256 is checked on those bytes. The pristine file must then pass
// fgresq_sdk.niqe.Pristine.from_dict's rules (niqe::parse_pristine). Other roles (checkpoint, compare_head,
// engine...) are validated but neither opened nor hashed. Every problem is an Error: NOT_FOUND for a missing folder/manifest/file, UNSUPPORTED for a newer
// format, CORRUPTED for everything else; one line naming the file.
LoadedBundle load_bundle(const std::string& path, bool verify);

}  // namespace fgresq::detail
