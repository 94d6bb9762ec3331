/* ascend-patch C ABI: what the vLLM patch package (patch/python/ascend_patch) calls through ctypes.
 *
 * Conventions
 * - Every function returns 0 on success or an HCCL result code: HCCL_E_PARA (1) for bad arguments,
 *   HCCL_E_PTR (2) for a null pointer, HCCL_E_MEMORY (3) when /dev/shm (or device memory) is too small,
 *   HCCL_E_NOT_SUPPORT (5), HCCL_E_TIMEOUT (9) when a peer does not answer within HCCL_EXEC_TIMEOUT
 *   seconds (or has died), HCCL_E_RUNTIME (15) when the device runtime fails, HCCL_E_INTERNAL (4)
 *   otherwise. The message
 *   of the calling thread's last failure is returned by ascend_patch_last_error.
 * - dtype is an HcclDataType (0 int8, 1 int16, 2 int32, 3 fp16, 4 fp32, 5 int64, 6 uint64, 7 uint8,
 *   8 uint16, 9 uint32, 10 fp64, 11 bf16); op is an HcclReduceOp (0 sum, 1 prod, 2 max, 3 min).
 * - A communicator made with device < 0 is a *host* communicator: buffers are host memory (CPU
 *   tensors), used in place, and each call completes before it returns; pass stream = NULL.
 *   Otherwise buffers are device memory and the call is enqueued on `stream` (an aclrtStream).
 * - Ranks (root, peer) are ranks inside the communicator.
 */
#ifndef ASCEND_PATCH_H
#define ASCEND_PATCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ASCEND_PATCH_ROOT_INFO_BYTES 4108

typedef void *AscendPatchComm;

/* Copies the last failure's message (NUL-terminated) into buf when cap is large enough; returns
 * the bytes needed, NUL included. */
size_t ascend_patch_last_error(char *buf, size_t cap);

/* A new root info (made by one rank, sent to the others), in out (cap >= ASCEND_PATCH_ROOT_INFO_BYTES): for a
 * communicator on device `device`, or a host-only one when device < 0. */
int32_t ascend_patch_root_info(int32_t device, uint8_t *out, size_t cap);
int32_t ascend_patch_comm_init(const uint8_t *root, size_t len, uint32_t nranks, uint32_t rank, int32_t device,
                               AscendPatchComm *comm);
/* As above; timeout_s > 0 replaces HCCL_CONNECT_TIMEOUT and HCCL_EXEC_TIMEOUT (host transport). */
int32_t ascend_patch_comm_init_timeout(const uint8_t *root, size_t len, uint32_t nranks, uint32_t rank,
                                       int32_t device, double timeout_s, AscendPatchComm *comm);
/* The handle is invalid afterwards (a destroyed or unknown handle is HCCL_E_PARA, never freed twice);
 * shared memory is released once calls in flight on it have returned and every rank has destroyed its handle. */
int32_t ascend_patch_comm_destroy(AscendPatchComm comm);
/* Fails a host communicator for every rank now: calls in flight on it (here and on the other ranks)
 * return HCCL_E_REMOTE within milliseconds, later ones too; destroy the handle afterwards.
 * HCCL_E_NOT_SUPPORT for a device communicator. */
int32_t ascend_patch_comm_abort(AscendPatchComm comm);

/* recv = op over ranks of send (count elements; send == recv allowed). */
int32_t ascend_patch_all_reduce(AscendPatchComm comm, const void *send, void *recv, uint64_t count, int32_t dtype,
                                int32_t op, void *stream);
/* recv (nranks * count) = every rank's send (count), in rank order. */
int32_t ascend_patch_all_gather(AscendPatchComm comm, const void *send, void *recv, uint64_t count, int32_t dtype,
                                void *stream);
/* recv (count) = this rank's block of op over every rank's send (nranks * count). */
int32_t ascend_patch_reduce_scatter(AscendPatchComm comm, const void *send, void *recv, uint64_t count,
                                    int32_t dtype, int32_t op, void *stream);
/* On root, recv (nranks * count) = every rank's send (count); recv is ignored elsewhere. */
int32_t ascend_patch_gather(AscendPatchComm comm, const void *send, void *recv, uint64_t count, int32_t dtype,
                            int32_t root, void *stream);
int32_t ascend_patch_broadcast(AscendPatchComm comm, void *buf, uint64_t count, int32_t dtype, int32_t root,
                               void *stream);
int32_t ascend_patch_send(AscendPatchComm comm, const void *buf, uint64_t count, int32_t dtype, int32_t peer,
                          void *stream);
int32_t ascend_patch_recv(AscendPatchComm comm, void *buf, uint64_t count, int32_t dtype, int32_t peer,
                          void *stream);
int32_t ascend_patch_barrier(AscendPatchComm comm, void *stream);

/* vLLM's groups of `kind` ("tp", "dcp", "pcp", "pp", "dp", "ep", "eplb") as *groups rows of
 * *group_size ranks, in vLLM's creation order (sizes are written even when cap is too small). */
int32_t ascend_patch_layout(uint32_t world, uint32_t tp, uint32_t pp, uint32_t dp, uint32_t pcp, uint32_t dcp,
                            const char *kind, int32_t *out, size_t cap, size_t *groups, size_t *group_size);

/* The patch registry as a JSON array (NUL-terminated); *needed gets its size. */
int32_t ascend_patch_registry_json(char *buf, size_t cap, size_t *needed);

/* *supported = 1 when `version` satisfies any of `specs` (';'-separated, e.g. "0.33.0;>=0.30,<0.34"). */
int32_t ascend_patch_version_supported(const char *version, const char *specs, int32_t *supported);

#ifdef __cplusplus
}
#endif

#endif
