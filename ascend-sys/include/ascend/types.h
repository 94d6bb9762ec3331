/*
 * ascend/types.h - types, constants and error codes of the CANN C API subset used by ascend-rs
 * (ACL runtime, HCCL, aclnn).
 *
 * These are the project's own declarations, restated from the public CANN API documentation; they
 * are not a copy of the CANN headers. Plain C99 (and valid C++17).
 *
 * - Every enum-like C type is an int32_t typedef and its values are #define constants: CANN adds
 *   values between releases, and the C enums are 4-byte signed anyway, so the ABI is identical.
 * - Error codes are written as `#define NAME <decimal>`, one per line: ascend-sys/build.rs parses
 *   those lines (names starting with ACL_ERROR_, HCCL_E_, ACLNN_ERR) into code -> name tables.
 *   Keep that shape when adding codes.
 * - Struct layouts are LP64 (identical on x86_64 and aarch64) and checked by static assertions.
 */
#ifndef ASCEND_TYPES_H
#define ASCEND_TYPES_H

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A compile-time assertion usable at file scope from C99, C11 and C++. */
#if defined(__cplusplus) && __cplusplus >= 201103L
#define ASCEND_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define ASCEND_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#else
#define ASCEND_STATIC_ASSERT_CAT2(a, b) a##b
#define ASCEND_STATIC_ASSERT_CAT(a, b) ASCEND_STATIC_ASSERT_CAT2(a, b)
#define ASCEND_STATIC_ASSERT(cond, msg) \
    typedef char ASCEND_STATIC_ASSERT_CAT(ascend_static_assert_, __LINE__)[(cond) ? 1 : -1]
#endif

/* ===================================================================================== */
/* ACL runtime: basic types                                                               */
/* ===================================================================================== */

typedef int32_t aclError;

typedef void *aclrtStream;
typedef void *aclrtEvent;
typedef void *aclrtContext;

typedef uint16_t aclFloat16;

typedef void (*aclrtCallback)(void *userData);
typedef void (*aclrtHostFunc)(void *args);

/* aclrtRunMode */
typedef int32_t aclrtRunMode;
#define ACL_DEVICE 0
#define ACL_HOST 1

/* aclrtMemcpyKind */
typedef int32_t aclrtMemcpyKind;
#define ACL_MEMCPY_HOST_TO_HOST 0
#define ACL_MEMCPY_HOST_TO_DEVICE 1
#define ACL_MEMCPY_DEVICE_TO_HOST 2
#define ACL_MEMCPY_DEVICE_TO_DEVICE 3
#define ACL_MEMCPY_DEFAULT 4
#define ACL_MEMCPY_HOST_TO_BUF_TO_DEVICE 5
#define ACL_MEMCPY_INNER_DEVICE_TO_DEVICE 6
#define ACL_MEMCPY_INTER_DEVICE_TO_DEVICE 7

/* aclrtMemMallocPolicy (one value per call; the values are not OR-ed) */
typedef int32_t aclrtMemMallocPolicy;
#define ACL_MEM_MALLOC_HUGE_FIRST 0
#define ACL_MEM_MALLOC_HUGE_ONLY 1
#define ACL_MEM_MALLOC_NORMAL_ONLY 2
#define ACL_MEM_MALLOC_HUGE_FIRST_P2P 3
#define ACL_MEM_MALLOC_HUGE_ONLY_P2P 4
#define ACL_MEM_MALLOC_NORMAL_ONLY_P2P 5
#define ACL_MEM_MALLOC_HUGE1G_ONLY 6
#define ACL_MEM_MALLOC_HUGE1G_ONLY_P2P 7
#define ACL_MEM_TYPE_LOW_BAND_WIDTH 0x100
#define ACL_MEM_TYPE_HIGH_BAND_WIDTH 0x1000
#define ACL_MEM_ACCESS_USER_SPACE_READONLY 0x100000

/* aclrtMemAttr */
typedef int32_t aclrtMemAttr;
#define ACL_DDR_MEM 0
#define ACL_HBM_MEM 1
#define ACL_DDR_MEM_HUGE 2
#define ACL_DDR_MEM_NORMAL 3
#define ACL_HBM_MEM_HUGE 4
#define ACL_HBM_MEM_NORMAL 5
#define ACL_DDR_MEM_P2P_HUGE 6
#define ACL_DDR_MEM_P2P_NORMAL 7
#define ACL_HBM_MEM_P2P_HUGE 8
#define ACL_HBM_MEM_P2P_NORMAL 9
#define ACL_HBM_MEM_HUGE1G 10
#define ACL_HBM_MEM_P2P_HUGE1G 11

/* aclrtEventRecordedStatus (aclrtQueryEventStatus) */
typedef int32_t aclrtEventRecordedStatus;
#define ACL_EVENT_RECORDED_STATUS_NOT_READY 0
#define ACL_EVENT_RECORDED_STATUS_COMPLETE 1

/* aclrtEventStatus (deprecated aclrtQueryEvent): inverted compared with aclrtEventRecordedStatus */
typedef int32_t aclrtEventStatus;
#define ACL_EVENT_STATUS_COMPLETE 0
#define ACL_EVENT_STATUS_NOT_READY 1
#define ACL_EVENT_STATUS_RESERVED 2

/* aclrtEventWaitStatus */
typedef int32_t aclrtEventWaitStatus;
#define ACL_EVENT_WAIT_STATUS_COMPLETE 0
#define ACL_EVENT_WAIT_STATUS_NOT_READY 1
#define ACL_EVENT_WAIT_STATUS_RESERVED 0xFFFF

/* aclrtStreamStatus */
typedef int32_t aclrtStreamStatus;
#define ACL_STREAM_STATUS_COMPLETE 0
#define ACL_STREAM_STATUS_NOT_READY 1
#define ACL_STREAM_STATUS_RESERVED 0xFFFF

/* aclrtCallbackBlockType */
typedef int32_t aclrtCallbackBlockType;
#define ACL_CALLBACK_NO_BLOCK 0
#define ACL_CALLBACK_BLOCK 1

/* Event flags (aclrtCreateEventWithFlag / aclrtCreateEventExWithFlag) */
#define ACL_EVENT_SYNC 0x1U
#define ACL_EVENT_CAPTURE_STREAM_PROGRESS 0x2U
#define ACL_EVENT_TIME_LINE 0x8U
#define ACL_EVENT_DEVICE_USE_ONLY 0x10U /* RT only */
#define ACL_EVENT_EXTERNAL 0x20U
#define ACL_EVENT_IPC 0x40U /* PT/RT only */

/* Stream flags (aclrtCreateStreamWithConfig); 8.1 has only FAST_LAUNCH and FAST_SYNC */
#define ACL_STREAM_FAST_LAUNCH 0x1U
#define ACL_STREAM_FAST_SYNC 0x2U
#define ACL_STREAM_PERSISTENT 0x4U
#define ACL_STREAM_HUGE 0x8U
#define ACL_STREAM_CPU_SCHEDULE 0x10U
#define ACL_STREAM_DEVICE_USE_ONLY 0x20U

/* aclDataType (8.1 stops at ACL_COMPLEX32; 34..41 appear in CANN >= 8.2/8.3) */
typedef int32_t aclDataType;
#define ACL_DT_UNDEFINED (-1)
#define ACL_FLOAT 0
#define ACL_FLOAT16 1
#define ACL_INT8 2
#define ACL_INT32 3
#define ACL_UINT8 4
#define ACL_INT16 6
#define ACL_UINT16 7
#define ACL_UINT32 8
#define ACL_INT64 9
#define ACL_UINT64 10
#define ACL_DOUBLE 11
#define ACL_BOOL 12
#define ACL_STRING 13
#define ACL_COMPLEX64 16
#define ACL_COMPLEX128 17
#define ACL_BF16 27
#define ACL_INT4 29
#define ACL_UINT1 30
#define ACL_COMPLEX32 33
#define ACL_HIFLOAT8 34
#define ACL_FLOAT8_E5M2 35
#define ACL_FLOAT8_E4M3FN 36
#define ACL_FLOAT8_E8M0 37
#define ACL_FLOAT6_E3M2 38
#define ACL_FLOAT6_E2M3 39
#define ACL_FLOAT4_E2M1 40
#define ACL_FLOAT4_E1M2 41

/* aclFormat (note: ACL_FRACTAL_Z_3D has no _FORMAT_ in its name) */
typedef int32_t aclFormat;
#define ACL_FORMAT_UNDEFINED (-1)
#define ACL_FORMAT_NCHW 0
#define ACL_FORMAT_NHWC 1
#define ACL_FORMAT_ND 2
#define ACL_FORMAT_NC1HWC0 3
#define ACL_FORMAT_FRACTAL_Z 4
#define ACL_FORMAT_NC1HWC0_C04 12
#define ACL_FORMAT_HWCN 16
#define ACL_FORMAT_NDHWC 27
#define ACL_FORMAT_FRACTAL_NZ 29
#define ACL_FORMAT_NCDHW 30
#define ACL_FORMAT_NDC1HWC0 32
#define ACL_FRACTAL_Z_3D 33
#define ACL_FORMAT_NC 35
#define ACL_FORMAT_NCL 47
#define ACL_FORMAT_FRACTAL_NZ_C0_16 50
#define ACL_FORMAT_FRACTAL_NZ_C0_32 51
#define ACL_FORMAT_FRACTAL_NZ_C0_2 52
#define ACL_FORMAT_FRACTAL_NZ_C0_4 53
#define ACL_FORMAT_FRACTAL_NZ_C0_8 54

/* ===================================================================================== */
/* ACL error codes (aclError)                                                              */
/* 1xxxxx caller/environment, 2xxxxx resources/unsupported, 3xxxxx business, 5xxxxx internal */
/* ===================================================================================== */

#define ACL_SUCCESS 0
#define ACL_ERROR_NONE 0

/* acl_base.h */
#define ACL_ERROR_INVALID_PARAM 100000
#define ACL_ERROR_UNINITIALIZE 100001
#define ACL_ERROR_REPEAT_INITIALIZE 100002
#define ACL_ERROR_INVALID_FILE 100003
#define ACL_ERROR_WRITE_FILE 100004
#define ACL_ERROR_INVALID_FILE_SIZE 100005
#define ACL_ERROR_PARSE_FILE 100006
#define ACL_ERROR_FILE_MISSING_ATTR 100007
#define ACL_ERROR_FILE_ATTR_INVALID 100008
#define ACL_ERROR_INVALID_DUMP_CONFIG 100009
#define ACL_ERROR_INVALID_PROFILING_CONFIG 100010
#define ACL_ERROR_INVALID_MODEL_ID 100011
#define ACL_ERROR_DESERIALIZE_MODEL 100012
#define ACL_ERROR_PARSE_MODEL 100013
#define ACL_ERROR_READ_MODEL_FAILURE 100014
#define ACL_ERROR_MODEL_SIZE_INVALID 100015
#define ACL_ERROR_MODEL_MISSING_ATTR 100016
#define ACL_ERROR_MODEL_INPUT_NOT_MATCH 100017
#define ACL_ERROR_MODEL_OUTPUT_NOT_MATCH 100018
#define ACL_ERROR_MODEL_NOT_DYNAMIC 100019
#define ACL_ERROR_OP_TYPE_NOT_MATCH 100020
#define ACL_ERROR_OP_INPUT_NOT_MATCH 100021
#define ACL_ERROR_OP_OUTPUT_NOT_MATCH 100022
#define ACL_ERROR_OP_ATTR_NOT_MATCH 100023
#define ACL_ERROR_OP_NOT_FOUND 100024
#define ACL_ERROR_OP_LOAD_FAILED 100025
#define ACL_ERROR_UNSUPPORTED_DATA_TYPE 100026
#define ACL_ERROR_FORMAT_NOT_MATCH 100027
#define ACL_ERROR_BIN_SELECTOR_NOT_REGISTERED 100028
#define ACL_ERROR_KERNEL_NOT_FOUND 100029
#define ACL_ERROR_BIN_SELECTOR_ALREADY_REGISTERED 100030
#define ACL_ERROR_KERNEL_ALREADY_REGISTERED 100031
#define ACL_ERROR_INVALID_QUEUE_ID 100032
#define ACL_ERROR_REPEAT_SUBSCRIBE 100033
#define ACL_ERROR_STREAM_NOT_SUBSCRIBE 100034
#define ACL_ERROR_THREAD_NOT_SUBSCRIBE 100035
#define ACL_ERROR_WAIT_CALLBACK_TIMEOUT 100036
#define ACL_ERROR_REPEAT_FINALIZE 100037
#define ACL_ERROR_NOT_STATIC_AIPP 100038
#define ACL_ERROR_COMPILING_STUB_MODE 100039
#define ACL_ERROR_GROUP_NOT_SET 100040
#define ACL_ERROR_GROUP_NOT_CREATE 100041
#define ACL_ERROR_PROF_ALREADY_RUN 100042
#define ACL_ERROR_PROF_NOT_RUN 100043
#define ACL_ERROR_DUMP_ALREADY_RUN 100044
#define ACL_ERROR_DUMP_NOT_RUN 100045
#define ACL_ERROR_PROF_REPEAT_SUBSCRIBE 148046
#define ACL_ERROR_PROF_API_CONFLICT 148047
#define ACL_ERROR_INVALID_MAX_OPQUEUE_NUM_CONFIG 148048
#define ACL_ERROR_INVALID_OPP_PATH 148049
#define ACL_ERROR_OP_UNSUPPORTED_DYNAMIC 148050
#define ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED 148051
#define ACL_ERROR_UNSUPPORTED_JPEG 148052
#define ACL_ERROR_INVALID_BUNDLE_MODEL_ID 148053
#define ACL_ERROR_BAD_ALLOC 200000
#define ACL_ERROR_API_NOT_SUPPORT 200001
#define ACL_ERROR_INVALID_DEVICE 200002
#define ACL_ERROR_MEMORY_ADDRESS_UNALIGNED 200003
#define ACL_ERROR_RESOURCE_NOT_MATCH 200004
#define ACL_ERROR_INVALID_RESOURCE_HANDLE 200005
#define ACL_ERROR_FEATURE_UNSUPPORTED 200006
#define ACL_ERROR_PROF_MODULES_UNSUPPORTED 200007
#define ACL_ERROR_STORAGE_OVER_LIMIT 300000
#define ACL_ERROR_INTERNAL_ERROR 500000
#define ACL_ERROR_FAILURE 500001
#define ACL_ERROR_GE_FAILURE 500002
#define ACL_ERROR_RT_FAILURE 500003
#define ACL_ERROR_DRV_FAILURE 500004
#define ACL_ERROR_PROFILING_FAILURE 500005

/* rt_error_codes.h (the 8.1 set; "newer" marks codes added after 8.1) */
#define ACL_ERROR_RT_PARAM_INVALID 107000
#define ACL_ERROR_RT_INVALID_DEVICEID 107001
#define ACL_ERROR_RT_CONTEXT_NULL 107002
#define ACL_ERROR_RT_STREAM_CONTEXT 107003
#define ACL_ERROR_RT_MODEL_CONTEXT 107004
#define ACL_ERROR_RT_STREAM_MODEL 107005
#define ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID 107006
#define ACL_ERROR_RT_EVENT_TIMESTAMP_REVERSAL 107007
#define ACL_ERROR_RT_ADDR_UNALIGNED 107008
#define ACL_ERROR_RT_FILE_OPEN 107009
#define ACL_ERROR_RT_FILE_WRITE 107010
#define ACL_ERROR_RT_STREAM_SUBSCRIBE 107011
#define ACL_ERROR_RT_THREAD_SUBSCRIBE 107012
#define ACL_ERROR_RT_GROUP_NOT_SET 107013
#define ACL_ERROR_RT_GROUP_NOT_CREATE 107014
#define ACL_ERROR_RT_STREAM_NO_CB_REG 107015
#define ACL_ERROR_RT_INVALID_MEMORY_TYPE 107016
#define ACL_ERROR_RT_INVALID_HANDLE 107017
#define ACL_ERROR_RT_INVALID_MALLOC_TYPE 107018
#define ACL_ERROR_RT_WAIT_TIMEOUT 107019
#define ACL_ERROR_RT_TASK_TIMEOUT 107020
#define ACL_ERROR_RT_SYSPARAMOPT_NOT_SET 107021
#define ACL_ERROR_RT_DEVICE_TASK_ABORT 107022
#define ACL_ERROR_RT_STREAM_ABORT 107023
#define ACL_ERROR_RT_CAPTURE_DEPENDENCY 107024
#define ACL_ERROR_RT_STREAM_UNJOINED 107025
#define ACL_ERROR_RT_MODEL_CAPTURED 107026
#define ACL_ERROR_RT_STREAM_CAPTURED 107027
#define ACL_ERROR_RT_EVENT_CAPTURED 107028
#define ACL_ERROR_RT_STREAM_NOT_CAPTURED 107029
#define ACL_ERROR_RT_CAPTURE_MODE_NOT_SUPPORT 107030
#define ACL_ERROR_RT_STREAM_CAPTURE_IMPLICIT 107031
#define ACL_ERROR_STREAM_CAPTURE_CONFLICT 107032
#define ACL_ERROR_STREAM_TASK_GROUP_STATUS 107033
#define ACL_ERROR_STREAM_TASK_GROUP_INTR 107034
#define ACL_ERROR_RT_TASK_ABORT_STOP 107035 /* newer */
#define ACL_ERROR_RT_STREAM_CAPTURE_UNMATCHED 107036 /* newer */
#define ACL_ERROR_RT_FEATURE_NOT_SUPPORT 207000
#define ACL_ERROR_RT_MEMORY_ALLOCATION 207001
#define ACL_ERROR_RT_MEMORY_FREE 207002
#define ACL_ERROR_RT_AICORE_OVER_FLOW 207003
#define ACL_ERROR_RT_NO_DEVICE 207004
#define ACL_ERROR_RT_RESOURCE_ALLOC_FAIL 207005
#define ACL_ERROR_RT_NO_PERMISSION 207006
#define ACL_ERROR_RT_NO_EVENT_RESOURCE 207007
#define ACL_ERROR_RT_NO_STREAM_RESOURCE 207008
#define ACL_ERROR_RT_NO_NOTIFY_RESOURCE 207009
#define ACL_ERROR_RT_NO_MODEL_RESOURCE 207010
#define ACL_ERROR_RT_NO_CDQ_RESOURCE 207011
#define ACL_ERROR_RT_OVER_LIMIT 207012
#define ACL_ERROR_RT_QUEUE_EMPTY 207013
#define ACL_ERROR_RT_QUEUE_FULL 207014
#define ACL_ERROR_RT_REPEATED_INIT 207015
#define ACL_ERROR_RT_AIVEC_OVER_FLOW 207016
#define ACL_ERROR_RT_OVER_FLOW 207017
#define ACL_ERROR_RT_DEVICE_OOM 207018
#define ACL_ERROR_RT_FEATURE_NOT_SUPPORT_UPDATE_OP 207019 /* newer */
#define ACL_ERROR_RT_TIMEOUT 207020 /* newer */
#define ACL_ERROR_RT_INTERNAL_ERROR 507000
#define ACL_ERROR_RT_TS_ERROR 507001
#define ACL_ERROR_RT_STREAM_TASK_FULL 507002
#define ACL_ERROR_RT_STREAM_TASK_EMPTY 507003
#define ACL_ERROR_RT_STREAM_NOT_COMPLETE 507004
#define ACL_ERROR_RT_END_OF_SEQUENCE 507005
#define ACL_ERROR_RT_EVENT_NOT_COMPLETE 507006
#define ACL_ERROR_RT_CONTEXT_RELEASE_ERROR 507007
#define ACL_ERROR_RT_SOC_VERSION 507008
#define ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT 507009
#define ACL_ERROR_RT_LOST_HEARTBEAT 507010
#define ACL_ERROR_RT_MODEL_EXECUTE 507011
#define ACL_ERROR_RT_REPORT_TIMEOUT 507012
#define ACL_ERROR_RT_SYS_DMA 507013
#define ACL_ERROR_RT_AICORE_TIMEOUT 507014
#define ACL_ERROR_RT_AICORE_EXCEPTION 507015
#define ACL_ERROR_RT_AICORE_TRAP_EXCEPTION 507016
#define ACL_ERROR_RT_AICPU_TIMEOUT 507017
#define ACL_ERROR_RT_AICPU_EXCEPTION 507018
#define ACL_ERROR_RT_AICPU_DATADUMP_RSP_ERR 507019
#define ACL_ERROR_RT_AICPU_MODEL_RSP_ERR 507020
#define ACL_ERROR_RT_PROFILING_ERROR 507021
#define ACL_ERROR_RT_IPC_ERROR 507022
#define ACL_ERROR_RT_MODEL_ABORT_NORMAL 507023
#define ACL_ERROR_RT_KERNEL_UNREGISTERING 507024
#define ACL_ERROR_RT_RINGBUFFER_NOT_INIT 507025
#define ACL_ERROR_RT_RINGBUFFER_NO_DATA 507026
#define ACL_ERROR_RT_KERNEL_LOOKUP 507027
#define ACL_ERROR_RT_KERNEL_DUPLICATE 507028
#define ACL_ERROR_RT_DEBUG_REGISTER_FAIL 507029
#define ACL_ERROR_RT_DEBUG_UNREGISTER_FAIL 507030
#define ACL_ERROR_RT_LABEL_CONTEXT 507031
#define ACL_ERROR_RT_PROGRAM_USE_OUT 507032
#define ACL_ERROR_RT_DEV_SETUP_ERROR 507033
#define ACL_ERROR_RT_VECTOR_CORE_TIMEOUT 507034
#define ACL_ERROR_RT_VECTOR_CORE_EXCEPTION 507035
#define ACL_ERROR_RT_VECTOR_CORE_TRAP_EXCEPTION 507036
#define ACL_ERROR_RT_CDQ_BATCH_ABNORMAL 507037
#define ACL_ERROR_RT_DIE_MODE_CHANGE_ERROR 507038
#define ACL_ERROR_RT_DIE_SET_ERROR 507039
#define ACL_ERROR_RT_INVALID_DIEID 507040
#define ACL_ERROR_RT_DIE_MODE_NOT_SET 507041
#define ACL_ERROR_RT_STREAM_SYNC_TIMEOUT 507046
#define ACL_ERROR_RT_EVENT_SYNC_TIMEOUT 507047
#define ACL_ERROR_RT_FFTS_PLUS_TIMEOUT 507048
#define ACL_ERROR_RT_FFTS_PLUS_EXCEPTION 507049
#define ACL_ERROR_RT_FFTS_PLUS_TRAP_EXCEPTION 507050
#define ACL_ERROR_RT_SEND_MSG 507051
#define ACL_ERROR_RT_COPY_DATA 507052
#define ACL_ERROR_RT_DEVICE_MEM_ERROR 507053
#define ACL_ERROR_RT_HBM_MULTI_BIT_ECC_ERROR 507054
#define ACL_ERROR_SUSPECT_DEVICE_MEM_ERROR 507055 /* newer */
#define ACL_ERROR_LINK_ERROR 507056 /* newer */
#define ACL_ERROR_SUSPECT_REMOTE_ERROR 507057 /* newer */
#define ACL_ERROR_RT_DRV_INTERNAL_ERROR 507899
#define ACL_ERROR_RT_AICPU_INTERNAL_ERROR 507900
#define ACL_ERROR_RT_SOCKET_CLOSE 507901
#define ACL_ERROR_RT_AICPU_INFO_LOAD_RSP_ERR 507902
#define ACL_ERROR_RT_STREAM_CAPTURE_INVALIDATED 507903
#define ACL_ERROR_RT_COMM_OP_RETRY_FAIL 507904 /* newer */

/* ge_error_codes.h: only the first code is named here */
#define ACL_ERROR_GE_PARAM_INVALID 145000

/* ===================================================================================== */
/* HCCL                                                                                    */
/* ===================================================================================== */

typedef void *HcclComm;

/* HcclResult */
typedef int32_t HcclResult;
#define HCCL_SUCCESS 0
#define HCCL_E_PARA 1
#define HCCL_E_PTR 2
#define HCCL_E_MEMORY 3
#define HCCL_E_INTERNAL 4
#define HCCL_E_NOT_SUPPORT 5
#define HCCL_E_NOT_FOUND 6
#define HCCL_E_UNAVAIL 7
#define HCCL_E_SYSCALL 8
#define HCCL_E_TIMEOUT 9
#define HCCL_E_OPEN_FILE_FAILURE 10
#define HCCL_E_TCP_CONNECT 11
#define HCCL_E_ROCE_CONNECT 12
#define HCCL_E_TCP_TRANSFER 13
#define HCCL_E_ROCE_TRANSFER 14
#define HCCL_E_RUNTIME 15
#define HCCL_E_DRV 16
#define HCCL_E_PROFILING 17
#define HCCL_E_CCE 18
#define HCCL_E_NETWORK 19
#define HCCL_E_AGAIN 20
#define HCCL_E_REMOTE 21
#define HCCL_E_SUSPENDING 22
#define HCCL_E_OPRETRY_FAIL 23 /* PT */
#define HCCL_E_OOM 24 /* PT */
#define HCCL_E_RESERVED 25

/* HcclReduceOp */
typedef int32_t HcclReduceOp;
#define HCCL_REDUCE_SUM 0
#define HCCL_REDUCE_PROD 1
#define HCCL_REDUCE_MAX 2
#define HCCL_REDUCE_MIN 3
#define HCCL_REDUCE_RESERVED 255

/* HcclDataType */
typedef int32_t HcclDataType;
#define HCCL_DATA_TYPE_INT8 0
#define HCCL_DATA_TYPE_INT16 1
#define HCCL_DATA_TYPE_INT32 2
#define HCCL_DATA_TYPE_FP16 3
#define HCCL_DATA_TYPE_FP32 4
#define HCCL_DATA_TYPE_INT64 5
#define HCCL_DATA_TYPE_UINT64 6
#define HCCL_DATA_TYPE_UINT8 7
#define HCCL_DATA_TYPE_UINT16 8
#define HCCL_DATA_TYPE_UINT32 9
#define HCCL_DATA_TYPE_FP64 10
#define HCCL_DATA_TYPE_BFP16 11
#define HCCL_DATA_TYPE_INT128 12
#define HCCL_DATA_TYPE_HIF8 14 /* PT */
#define HCCL_DATA_TYPE_FP8E4M3 15 /* PT */
#define HCCL_DATA_TYPE_FP8E5M2 16 /* PT */
#define HCCL_DATA_TYPE_FP8E8M0 17 /* PT */
#define HCCL_DATA_TYPE_RESERVED 255

/* HcclSendRecvType */
typedef int32_t HcclSendRecvType;
#define HCCL_SEND 0
#define HCCL_RECV 1

/* HcclConfig (HcclSetConfig / HcclGetConfig) */
typedef int32_t HcclConfig;
#define HCCL_DETERMINISTIC 0
#define HCCL_CONFIG_RESERVED 1

/* HcclCommConfigCapability (bits reported by HcclGetCommConfigCapability) */
typedef int32_t HcclCommConfigCapability;
#define HCCL_COMM_CONFIG_BUFFER_SIZE 0
#define HCCL_COMM_CONFIG_DETERMINISTIC 1
#define HCCL_COMM_CONFIG_COMM_NAME 2
#define HCCL_COMM_CONFIG_OP_EXPANSION_MODE 3
#define HCCL_COMM_CONFIG_SUPPORT_INIT_BY_ENV 4

/* HCCL constants (const uint32_t in hccl_types.h) */
#define HCCL_ROOT_INFO_BYTES 4108
#define COMM_NAME_MAX_LENGTH 128
#define UDI_MAX_LENGTH 128
#define HCCL_COMM_CONFIG_INFO_BYTES 24
#define HCCL_COMM_CONFIG_MAGIC_WORD 0xf0f0f0f0U
#define HCCL_COMM_CONFIG_VERSION 5
#define HCCL_COMM_DEFAULT_BUFFSIZE 200 /* MB */
#define HCCL_COMM_BUFFSIZE_CONFIG_NOT_SET 0xffffffffU
#define HCCL_COMM_DETERMINISTIC_CONFIG_NOT_SET 0xffffffffU
#define HCCL_COMM_TRAFFIC_CLASS_CONFIG_NOT_SET 0xffffffffU
#define HCCL_COMM_SERVICE_LEVEL_CONFIG_NOT_SET 0xffffffffU
#define HCCL_COMM_DEFAULT_DETERMINISTIC 0
#define HCCL_COMM_DEFAULT_OP_EXPANSION_MODE 0

/* Opaque root-of-communicator blob; only the root creates it, the user broadcasts its bytes. */
typedef struct HcclRootInfo {
    char internal[HCCL_ROOT_INFO_BYTES];
} HcclRootInfo;

/* The versioned header stored in HcclCommConfig.reserved. */
typedef struct HcclCommConfigHeader {
    size_t size;
    uint32_t magicWord;
    uint32_t version;
    uint64_t reserved;
} HcclCommConfigHeader;

/* Communicator configuration, version 5 (CANN 8.1); initialise it with HcclCommConfigInit. */
typedef struct HcclCommConfig {
    char reserved[HCCL_COMM_CONFIG_INFO_BYTES];
    uint32_t hcclBufferSize;
    uint32_t hcclDeterministic;
    char hcclCommName[COMM_NAME_MAX_LENGTH];
    char hcclUdi[UDI_MAX_LENGTH];
    uint32_t hcclOpExpansionMode; /* 0 default, 1 host, 2 aicpu, 3 aiv */
    uint32_t hcclRdmaTrafficClass;
    uint32_t hcclRdmaServiceLevel;
} HcclCommConfig;

/* Value of an HcclConfig (untypedef'd `union HcclConfigValue` in hccl_types.h). */
typedef union HcclConfigValue {
    int32_t value;
} HcclConfigValue;

/* One item of HcclBatchSendRecv. */
typedef struct HcclSendRecvItem {
    HcclSendRecvType sendRecvType;
    void *buf;
    uint64_t count;
    HcclDataType dataType;
    uint32_t remoteRank;
} HcclSendRecvItem;

ASCEND_STATIC_ASSERT(sizeof(HcclRootInfo) == 4108, "HcclRootInfo must be 4108 bytes");
ASCEND_STATIC_ASSERT(sizeof(HcclCommConfigHeader) == HCCL_COMM_CONFIG_INFO_BYTES,
                     "HcclCommConfigHeader must fill HcclCommConfig.reserved");
ASCEND_STATIC_ASSERT(sizeof(HcclCommConfig) == 300, "HcclCommConfig (v5) must be 300 bytes");
ASCEND_STATIC_ASSERT(offsetof(HcclCommConfig, hcclCommName) == 32, "HcclCommConfig layout");
ASCEND_STATIC_ASSERT(offsetof(HcclCommConfig, hcclOpExpansionMode) == 288, "HcclCommConfig layout");
ASCEND_STATIC_ASSERT(sizeof(HcclConfigValue) == 4, "HcclConfigValue must be 4 bytes");
ASCEND_STATIC_ASSERT(sizeof(HcclSendRecvItem) == 32, "HcclSendRecvItem must be 32 bytes");

/* ===================================================================================== */
/* aclnn                                                                                   */
/* ===================================================================================== */

typedef int32_t aclnnStatus;

#define ACLNN_SUCCESS 0
#define ACLNN_ERR_PARAM_NULLPTR 161001
#define ACLNN_ERR_PARAM_INVALID 161002
#define ACLNN_ERR_RUNTIME_ERROR 361001
#define ACLNN_ERR_INNER 561000
#define ACLNN_ERR_INNER_INFERSHAPE_ERROR 561001
#define ACLNN_ERR_INNER_TILING_ERROR 561002
#define ACLNN_ERR_INNER_FIND_KERNEL_ERROR 561003
#define ACLNN_ERR_INNER_CREATE_EXECUTOR 561101
#define ACLNN_ERR_INNER_NOT_TRANS_EXECUTOR 561102
#define ACLNN_ERR_INNER_NULLPTR 561103
#define ACLNN_ERR_INNER_WRONG_ATTR_INFO_SIZE 561104
#define ACLNN_ERR_INNER_KEY_CONFILICT 561105 /* sic */
#define ACLNN_ERR_INNER_INVALID_IMPL_MODE 561106
#define ACLNN_ERR_INNER_OPP_PATH_NOT_FOUND 561107 /* ASCEND_OPP_PATH unset */
#define ACLNN_ERR_INNER_LOAD_JSON_FAILED 561108
#define ACLNN_ERR_INNER_JSON_VALUE_NOT_FOUND 561109
#define ACLNN_ERR_INNER_JSON_FORMAT_INVALID 561110
#define ACLNN_ERR_INNER_JSON_DTYPE_INVALID 561111
#define ACLNN_ERR_INNER_OPP_KERNEL_PKG_NOT_FOUND 561112
#define ACLNN_ERR_INNER_OP_FILE_INVALID 561113

/* Opaque aclnn objects (libnnopbase) */
typedef struct aclTensor aclTensor;
typedef struct aclIntArray aclIntArray;
typedef struct aclOpExecutor aclOpExecutor;
typedef struct aclTensorList aclTensorList;
typedef struct aclScalar aclScalar;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* ASCEND_TYPES_H */
