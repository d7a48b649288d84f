/* XLA FFI handlers that run oneDNN convolution primitives on XLA's own buffers.
 *
 * Built on first use by fer_jax/onednn_conv.py (a C compiler and
 * jaxlib's bundled FFI headers). Python builds the primitives through
 * oneDNN's C API and passes them in a `Plan`; the handlers only wrap XLA's
 * input and output buffers as oneDNN memories and execute. Compared with
 * jax.pure_callback this writes results in place (no copies) and never takes
 * the Python GIL.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#include "xla/ffi/api/c_api.h"

/* The parts of oneDNN's C API (oneapi/dnnl/dnnl.h, 3.x) used here. */
typedef struct { int arg; void* memory; } dnnl_exec_arg_t;
extern int dnnl_memory_create(void** memory, const void* memory_desc, void* engine, void* handle);
extern int dnnl_memory_destroy(void* memory);
extern int dnnl_primitive_execute(const void* primitive, void* stream, int nargs, const dnnl_exec_arg_t* args);
extern int dnnl_stream_wait(void* stream);

enum { ARG_SRC = 1, ARG_DST = 17, ARG_WEIGHTS = 33, ARG_BIAS = 41, ARG_DIFF_SRC = 129, ARG_DIFF_DST = 145,
       ARG_DIFF_WEIGHTS = 161, ARG_DIFF_BIAS = 169 };

/* Mirrored by onednn_conv._CPlan: keep the field order in step. */
typedef struct {
  void* engine;
  void* stream;
  void* src_md;
  void* dst_md;
  void* hwio_md;
  void* bias_md;                  /* NULL: no bias; else the forward adds it and kernel_grad also returns its gradient */
  void* forward;
  void* backward_data;
  void* backward_weights;
  void* forward_weights_md;
  void* backward_data_weights_md;
  void* diff_weights_md;
  void* to_forward_weights;
  void* to_backward_data_weights;
  void* from_diff_weights;
  void* forward_weights;          /* scratch buffers in oneDNN's weight layouts */
  void* backward_data_weights;
  void* diff_weights;
} Plan;

/* One oneDNN call at a time: each runs an OpenMP team over all cores. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static XLA_FFI_Error* error(const XLA_FFI_CallFrame* frame, const char* message) {
  XLA_FFI_Error_Create_Args args = {XLA_FFI_Error_Create_Args_STRUCT_SIZE, NULL, message,
                                    XLA_FFI_Error_Code_INTERNAL};
  return frame->api->XLA_FFI_Error_Create(&args);
}

static int run(const Plan* plan, void* primitive, int n, const int* kinds, void* const* descs, void* const* data) {
  void* memories[4] = {0};
  dnnl_exec_arg_t args[4];
  int status = 0;
  for (int i = 0; i < n && status == 0; ++i) {
    status = dnnl_memory_create(&memories[i], descs[i], plan->engine, data[i]);
    args[i].arg = kinds[i];
    args[i].memory = memories[i];
  }
  if (status == 0) status = dnnl_primitive_execute(primitive, plan->stream, n, args);
  if (status == 0) status = dnnl_stream_wait(plan->stream);
  for (int i = 0; i < n; ++i)
    if (memories[i]) dnnl_memory_destroy(memories[i]);
  return status;
}

/* Answers XLA's metadata query; else checks the call and returns the plan and buffer pointers.
 * With a bias the call has one more argument (forward) or result (gradients) than nargs, nrets say. */
static XLA_FFI_Error* decode(XLA_FFI_CallFrame* frame, int64_t nargs, int64_t nrets, int forward, const Plan** plan,
                             void** args, void** rets, int* done) {
  *done = 0;
  if (frame->extension_start != NULL && frame->extension_start->type == XLA_FFI_Extension_Metadata) {
    XLA_FFI_Metadata_Extension* extension = (XLA_FFI_Metadata_Extension*)frame->extension_start;
    XLA_FFI_Api_Version version = {XLA_FFI_Api_Version_STRUCT_SIZE, NULL, XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR};
    extension->metadata->api_version = version;
    extension->metadata->traits = 0;
    *done = 1;
    return NULL;
  }
  if (frame->stage != XLA_FFI_ExecutionStage_EXECUTE) {
    *done = 1;
    return NULL;
  }
  if (frame->attrs.size != 1 || frame->attrs.types[0] != XLA_FFI_AttrType_SCALAR ||
      ((const XLA_FFI_Scalar*)frame->attrs.attrs[0])->dtype != XLA_FFI_DataType_S64)
    return error(frame, "fer_jax oneDNN convolution: the `plan` attribute must be an int64");
  *plan = (const Plan*)(intptr_t)(*(const int64_t*)((const XLA_FFI_Scalar*)frame->attrs.attrs[0])->value);
  if ((*plan)->bias_md != NULL) {
    if (forward) nargs += 1; /* x, kernel, bias */
    else nrets += 1;         /* ..., dkernel, dbias */
  }
  if (frame->args.size != nargs || frame->rets.size != nrets)
    return error(frame, "fer_jax oneDNN convolution: unexpected arguments (onednn_ffi.c and onednn_conv.py disagree)");
  for (int64_t i = 0; i < nargs; ++i) args[i] = ((XLA_FFI_Buffer*)frame->args.args[i])->data;
  for (int64_t i = 0; i < nrets; ++i) rets[i] = ((XLA_FFI_Buffer*)frame->rets.rets[i])->data;
  return NULL;
}

static XLA_FFI_Error* status_error(XLA_FFI_CallFrame* frame, int status, const char* what) {
  static __thread char message[160];
  snprintf(message, sizeof message, "fer_jax oneDNN convolution: %s returned dnnl status %d", what, status);
  return error(frame, message);
}

static int forward(const Plan* p, void* const* in, void* const* out);

/* Decodes the call, then runs `body` on the plan and XLA's buffers, one call at a time. */
static XLA_FFI_Error* handle(XLA_FFI_CallFrame* frame, int64_t nargs, int64_t nrets,
                             int (*body)(const Plan*, void* const*, void* const*), const char* what) {
  int is_forward = body == forward;
  const Plan* plan = NULL;
  void *in[3], *out[3];
  int done;
  XLA_FFI_Error* err = decode(frame, nargs, nrets, is_forward, &plan, in, out, &done);
  if (err != NULL || done) return err;
  pthread_mutex_lock(&lock);
  int status = body(plan, in, out);
  pthread_mutex_unlock(&lock);
  return status == 0 ? NULL : status_error(frame, status, what);
}

/* in: x [N,H,W,Ci], kernel [kh,kw,Ci,Co] (, bias [Co]); out: y [N,Ho,Wo,Co]. */
static int forward(const Plan* p, void* const* in, void* const* out) {
  int status = run(p, p->to_forward_weights, 2, (int[]){ARG_SRC, ARG_DST},
                   (void*[]){p->hwio_md, p->forward_weights_md}, (void*[]){in[1], p->forward_weights});
  if (status == 0)
    status = run(p, p->forward, p->bias_md ? 4 : 3, (int[]){ARG_SRC, ARG_WEIGHTS, ARG_DST, ARG_BIAS},
                 (void*[]){p->src_md, p->forward_weights_md, p->dst_md, p->bias_md},
                 (void*[]){in[0], p->forward_weights, out[0], p->bias_md ? in[2] : NULL});
  return status;
}

/* in: x, dy; out: dkernel (, dbias). */
static int kernel_grad(const Plan* p, void* const* in, void* const* out) {
  int status = run(p, p->backward_weights, p->bias_md ? 4 : 3,
                   (int[]){ARG_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS, ARG_DIFF_BIAS},
                   (void*[]){p->src_md, p->dst_md, p->diff_weights_md, p->bias_md},
                   (void*[]){in[0], in[1], p->diff_weights, p->bias_md ? out[1] : NULL});
  if (status == 0)
    status = run(p, p->from_diff_weights, 2, (int[]){ARG_SRC, ARG_DST}, (void*[]){p->diff_weights_md, p->hwio_md},
                 (void*[]){p->diff_weights, out[0]});
  return status;
}

/* in: x, dy, kernel; out: dx, dkernel (, dbias). */
static int grads(const Plan* p, void* const* in, void* const* out) {
  int status = run(p, p->to_backward_data_weights, 2, (int[]){ARG_SRC, ARG_DST},
                   (void*[]){p->hwio_md, p->backward_data_weights_md}, (void*[]){in[2], p->backward_data_weights});
  if (status == 0)
    status = run(p, p->backward_data, 3, (int[]){ARG_DIFF_DST, ARG_WEIGHTS, ARG_DIFF_SRC},
                 (void*[]){p->dst_md, p->backward_data_weights_md, p->src_md},
                 (void*[]){in[1], p->backward_data_weights, out[0]});
  return status == 0 ? kernel_grad(p, in, out + 1) : status;
}

XLA_FFI_Error* fer_onednn_conv_forward(XLA_FFI_CallFrame* frame) {
  return handle(frame, 2, 1, forward, "forward");
}

XLA_FFI_Error* fer_onednn_conv_kernel_grad(XLA_FFI_CallFrame* frame) {
  return handle(frame, 2, 1, kernel_grad, "kernel gradient");
}

XLA_FFI_Error* fer_onednn_conv_grads(XLA_FFI_CallFrame* frame) {
  return handle(frame, 3, 2, grads, "input and kernel gradients");
}
