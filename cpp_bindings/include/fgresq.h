/* fgresq.h: C API of the FGResQ inference library (score, compare and rank restored images).
 *
 * A model bundle is the folder the Python SDK exports (model.json + encoder.onnx + heads.npz ...).
 * fgresq_open() validates model.json (types, format_version 1, every listed path relative and, with
 * symlinks resolved, inside the bundle, the preprocess spec of docs/preprocess-spec.md) and reads encoder.onnx and heads.npz once each, checking their
 * sha256 on the very bytes it then loads. Other listed files (the checkpoint...) must exist but are
 * neither opened nor hashed: this library does not use them.
 *
 * Conventions
 *  - Every function that can fail returns an fgresq_status; FGRESQ_OK (0) is success. On failure,
 *    fgresq_last_error() returns a one-line message for the calling thread (it names the file or the
 *    image index at fault). Each call clears the message first, so it is "" after a success.
 *  - No C++ exception ever leaves this API.
 *  - A model handle is immutable after fgresq_open() and may be used from several threads at once.
 *    fgresq_close() must not race with other calls on the same handle.
 *  - Output arrays are caller-allocated; nothing returned needs to be freed except the handle.
 *  - Pixels are 8-bit, row-major, top row first; channels 1 (gray), 3 (RGB) or 4 (RGBA; alpha is
 *    dropped, not composited, exactly like the Python SDK's `.convert("RGB")`).
 */
#ifndef FGRESQ_H_
#define FGRESQ_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(FGRESQ_BUILDING)
#define FGRESQ_API __declspec(dllexport)
#else
#define FGRESQ_API __declspec(dllimport)
#endif
#else
#define FGRESQ_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define FGRESQ_VERSION_MAJOR 0
#define FGRESQ_VERSION_MINOR 1
#define FGRESQ_VERSION_PATCH 0

typedef enum fgresq_status {
  FGRESQ_OK = 0,
  FGRESQ_INVALID_ARGUMENT = 1, /* null pointer, zero-size image, bad stride/channels, bad option */
  FGRESQ_NOT_FOUND = 2,        /* bundle folder, model.json or a listed file does not exist */
  FGRESQ_CORRUPTED = 3,        /* sha256 mismatch, malformed model.json / heads.npz, inconsistent shapes */
  FGRESQ_UNSUPPORTED = 4,      /* newer bundle format, unsupported dtype, backend not built in */
  FGRESQ_RUNTIME = 5,          /* the inference runtime failed (graph load or run) */
  FGRESQ_OUT_OF_MEMORY = 6,
  FGRESQ_INTERNAL = 7          /* a bug: please report it with the message */
} fgresq_status;

typedef enum fgresq_backend {
  FGRESQ_BACKEND_ONNXRUNTIME = 0, /* ONNX Runtime, CPU execution provider (default) */
  FGRESQ_BACKEND_TENSORRT = 1     /* not built in this release: fgresq_open() returns FGRESQ_UNSUPPORTED */
} fgresq_backend;

typedef struct fgresq_options {
  uint32_t struct_size;  /* sizeof(fgresq_options); set by fgresq_options_init */
  int32_t backend;       /* fgresq_backend */
  int32_t threads;       /* intra-op threads; 0 = the cores this process may use */
  int32_t batch_size;    /* images per encoder run; 0 = the Python SDK's default on a CPU: 2 for a conv-stats
                            model (config vision_cfg kind, such as the embedded default), else 16 */
  int32_t verify;        /* nonzero (default): check the sha256 of the files it reads (encoder, heads) on
                            the bytes it then loads; 0: skip the hashes (the manifest is still validated) */
} fgresq_options;

typedef struct fgresq_image {
  const uint8_t* data;
  int32_t width;
  int32_t height;
  int32_t stride_bytes; /* bytes from one row to the next; 0 = width * channels */
  int32_t channels;     /* 1 = gray, 3 = RGB, 4 = RGBA */
} fgresq_image;

typedef struct fgresq_model fgresq_model; /* opaque */

/* Index order of fgresq_compare()'s (and fgresq_compare_raw()'s) probabilities. */
enum { FGRESQ_FIRST_BETTER = 0, FGRESQ_SECOND_BETTER = 1, FGRESQ_SIMILAR = 2 };

FGRESQ_API const char* fgresq_version(void);
FGRESQ_API const char* fgresq_status_string(fgresq_status status);
/* Message of the calling thread's last failed call ("" if the last call succeeded). */
FGRESQ_API const char* fgresq_last_error(void);
/* Whether a backend is compiled into this build (1) or not (0). */
FGRESQ_API int fgresq_backend_available(fgresq_backend backend);

FGRESQ_API void fgresq_options_init(fgresq_options* options);

/* Open a bundle folder (or its model.json). options may be NULL for the defaults. */
FGRESQ_API fgresq_status fgresq_open(const char* bundle_dir, const fgresq_options* options, fgresq_model** model_out);
FGRESQ_API void fgresq_close(fgresq_model* model); /* NULL is a no-op */

/* Side length S of the model input (224) and the feature width F (3·D) of fgresq_encode(). */
FGRESQ_API int32_t fgresq_input_size(const fgresq_model* model);
FGRESQ_API int32_t fgresq_feature_size(const fgresq_model* model);
/* Bundle name from model.json (valid until fgresq_close). */
FGRESQ_API const char* fgresq_model_name(const fgresq_model* model);
/* Images per encoder run: options->batch_size, or the default it chose for 0 (0 for a NULL model). */
FGRESQ_API int32_t fgresq_batch_size(const fgresq_model* model);

/* Quality score in (0, 1) per image, higher is better. scores_out has n entries. For a bundle with a
 * `naturalness` section (fgresq_sdk/naturalness.py) it is the fused score, as the Python SDK's: the encoder's
 * score moved by the NIQE-style distance of the tensor it read; fgresq_encode and fgresq_rank return the same. */
FGRESQ_API fgresq_status fgresq_score(fgresq_model* model, const fgresq_image* images, size_t n, float* scores_out);

/* probs_out[3]: P(a better), P(b better), P(similar); they sum to 1. Order-symmetrised like the Python SDK's
 * Scorer.compare: the head runs on (a, b) and on (b, a) and the two are averaged, so swapping a and b swaps
 * the first two probabilities exactly. */
FGRESQ_API fgresq_status fgresq_compare(fgresq_model* model, const fgresq_image* a, const fgresq_image* b,
                                        double probs_out[3]);
/* The single forward order: the head on (a, b) only, softmax in (first better, second better, similar) order,
 * exactly as the authors' release `predict_pair` computes it (Scorer.compare(a, b, raw=True), CLI
 * `compare --raw`). Swapping a and b does not in general swap the answer, and an image against itself need
 * not be a tie: the head is not antisymmetric. */
FGRESQ_API fgresq_status fgresq_compare_raw(fgresq_model* model, const fgresq_image* a, const fgresq_image* b,
                                            double probs_out[3]);

/* Rank n images best first: n encoder passes, then all n² pairs from the features.
 * order_out[k] is the input index at rank k (required). Optional (may be NULL), indexed by input:
 * scores_out (regression score), win_rate_out (mean symmetrised preference over the others; NaN when
 * n == 1: a single image has no others to win against, as the Python SDK; test it with isnan()),
 * tier_out (1 = best similar-quality tier: adjacent images share one when compare's verdict would be
 * "similar", i.e. p_similar is the most likely outcome or |p_first - p_second| < 0.02).
 * Strengths come from a Bradley–Terry fit on the soft-win totals by Newton's method (the Python SDK's
 * fgresq_sdk/ranking.py): ~10 steps whatever n; memory about 2·n² bytes (a float32 triangle of pair
 * curvatures) plus O(n); time O(n²) per step. */
FGRESQ_API fgresq_status fgresq_rank(fgresq_model* model, const fgresq_image* images, size_t n, int32_t* order_out,
                                     float* scores_out, double* win_rate_out, int32_t* tier_out);

/* Lower level, for callers that decode and encode in their own batches. */
/* features_out: n × fgresq_feature_size() floats (row-major); scores_out: n floats (either may be NULL). */
FGRESQ_API fgresq_status fgresq_encode(fgresq_model* model, const fgresq_image* images, size_t n, float* features_out,
                                       float* scores_out);
/* Compare two encoded images (fgresq_feature_size() floats each), order-symmetrised as fgresq_compare. */
FGRESQ_API fgresq_status fgresq_compare_features(fgresq_model* model, const float* features_a,
                                                 const float* features_b, double probs_out[3]);
/* The same, single forward order (a first) as fgresq_compare_raw. */
FGRESQ_API fgresq_status fgresq_compare_features_raw(fgresq_model* model, const float* features_a,
                                                     const float* features_b, double probs_out[3]);
/* Rank from encoded images, as fgresq_rank (win rate NaN when n == 1). scores (n floats) break ties in
 * strength. strength_out: Bradley–Terry log-strength (mean zero). All outputs except order_out may be NULL. */
FGRESQ_API fgresq_status fgresq_rank_features(fgresq_model* model, const float* features, const float* scores,
                                              size_t n, int32_t* order_out, double* win_rate_out, int32_t* tier_out,
                                              double* strength_out);
/* The model input for one image: float32 [3, S, S], made as the bundle's preprocess spec says
 * (docs/preprocess-spec.md): RGB, resize ignoring aspect ("bilinear-antialias" = PIL's bilinear resize, the
 * legacy default; "bilinear-cv2" = OpenCV's INTER_LINEAR), optional center crop, then /255 and the bundle's
 * mean/std. out_len must be at least 3·S·S. */
FGRESQ_API fgresq_status fgresq_preprocess(const fgresq_model* model, const fgresq_image* image, float* out,
                                           size_t out_len);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FGRESQ_H_ */
