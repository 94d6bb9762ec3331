/*
 * ascend.h - the C API subset of Huawei CANN (ACL runtime, HCCL, aclnn) that ascend-rs uses.
 *
 * These are the project's own declarations, restated from the public CANN API documentation; they are
 * not the CANN headers, and they compile as plain C (C99 or later) and as C++.
 *
 * - Enum-like C types are int32_t typedefs with #define values (see ascend/types.h): the ABI is the
 *   same as CANN's 4-byte enums, and values added by newer releases stay representable.
 * - ascend/api.def lists every function once; this header expands it into prototypes and into
 *   AscendApi, the table of function pointers that the Rust loader (from the real libraries) and the
 *   simulator fill. Nothing here needs to be linked against CANN.
 * - HcclCommConfigInit is a static inline function in the real hccl.h, not an exported symbol, so it
 *   is provided here (for the version-5 HcclCommConfig).
 */
#ifndef ASCEND_H
#define ASCEND_H

#include <string.h>

#include "ascend/types.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ASCEND_API(lib, ret, name, params) ret name params;
#include "ascend/api.def"
#undef ASCEND_API

/* The function table the Rust loader and the simulator fill: one pointer per entry of api.def, in order. */
typedef struct AscendApi {
#define ASCEND_API(lib, ret, name, params) ret (*name) params;
#include "ascend/api.def"
#undef ASCEND_API
} AscendApi;

/*
 * Initialises a version-5 HcclCommConfig to "nothing set": a versioned header in `reserved`
 * (size, magic word, version), buffer size, determinism and RDMA traffic class / service level
 * NOT_SET, default op expansion mode, empty communicator name and UDI. Zeroes the struct first.
 */
static inline void HcclCommConfigInit(HcclCommConfig *config)
{
    HcclCommConfigHeader header;

    if (config == NULL) {
        return;
    }
    memset(config, 0, sizeof(*config));

    header.size = sizeof(HcclCommConfig);
    header.magicWord = HCCL_COMM_CONFIG_MAGIC_WORD;
    header.version = HCCL_COMM_CONFIG_VERSION;
    header.reserved = 0;
    memcpy(config->reserved, &header, sizeof(header));

    config->hcclBufferSize = HCCL_COMM_BUFFSIZE_CONFIG_NOT_SET;
    config->hcclDeterministic = HCCL_COMM_DETERMINISTIC_CONFIG_NOT_SET;
    config->hcclOpExpansionMode = HCCL_COMM_DEFAULT_OP_EXPANSION_MODE;
    config->hcclRdmaTrafficClass = HCCL_COMM_TRAFFIC_CLASS_CONFIG_NOT_SET;
    config->hcclRdmaServiceLevel = HCCL_COMM_SERVICE_LEVEL_CONFIG_NOT_SET;

    config->hcclCommName[0] = '\0';
    config->hcclUdi[0] = '\0';
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* ASCEND_H */
