/* Drives the simulator's shared library through the project's C header, as a C client (the engine)
 * would: init, device, stream, memory, events, callbacks-free host function, and error paths.
 * Prints one line per check; exits non-zero on the first failure. */
#include <stdio.h>
#include <string.h>
#include "ascend.h"

static int failures = 0;

#define EXPECT(call, code)                                                                          \
    do {                                                                                            \
        aclError got_ = (call);                                                                     \
        if (got_ != (code)) {                                                                       \
            const char *m_ = aclGetRecentErrMsg();                                                  \
            printf("FAIL %s: got %d, want %d (%s)\n", #call, got_, (code), m_ ? m_ : "");           \
            failures++;                                                                             \
        } else {                                                                                    \
            printf("ok   %s\n", #call);                                                             \
        }                                                                                           \
    } while (0)

static void add_one(void *arg) { (*(int *)arg) += 1; }

int main(void) {
    EXPECT(aclInit(NULL), ACL_SUCCESS);
    EXPECT(aclInit(NULL), ACL_ERROR_REPEAT_INITIALIZE);

    uint32_t count = 0;
    EXPECT(aclrtGetDeviceCount(&count), ACL_SUCCESS);
    if (count != 2) { printf("FAIL device count %u, want 2\n", count); failures++; }
    EXPECT(aclrtSetDevice(2), ACL_ERROR_RT_INVALID_DEVICEID);
    int32_t dev = -1;
    EXPECT(aclrtGetDevice(&dev), ACL_ERROR_RT_CONTEXT_NULL);
    EXPECT(aclrtSetDevice(1), ACL_SUCCESS);
    EXPECT(aclrtGetDevice(&dev), ACL_SUCCESS);
    if (dev != 1) { printf("FAIL current device %d\n", dev); failures++; }
    const char *soc = aclrtGetSocName();
    if (!soc || strcmp(soc, "Ascend910B3") != 0) { printf("FAIL soc %s\n", soc ? soc : "(null)"); failures++; }

    aclrtStream stream = NULL;
    EXPECT(aclrtCreateStream(&stream), ACL_SUCCESS);

    void *dptr = NULL;
    EXPECT(aclrtMalloc(&dptr, 0, ACL_MEM_MALLOC_HUGE_FIRST), ACL_ERROR_INVALID_PARAM);
    EXPECT(aclrtMalloc(&dptr, 1000 * sizeof(float), ACL_MEM_MALLOC_HUGE_FIRST), ACL_SUCCESS);
    if (((uintptr_t)dptr) % 64 != 0) { printf("FAIL alignment\n"); failures++; }

    float *host = NULL;
    EXPECT(aclrtMallocHost((void **)&host, 1000 * sizeof(float)), ACL_SUCCESS);
    for (int i = 0; i < 1000; i++) host[i] = (float)i;
    EXPECT(aclrtMemcpyAsync(dptr, 4000, host, 4000, ACL_MEMCPY_HOST_TO_DEVICE, stream), ACL_SUCCESS);
    EXPECT(aclrtMemsetAsync(dptr, 4000, 0, 400, stream), ACL_SUCCESS);
    int calls = 0;
    EXPECT(aclrtLaunchHostFunc(stream, add_one, &calls), ACL_SUCCESS);
    aclrtEvent ev = NULL;
    EXPECT(aclrtCreateEvent(&ev), ACL_SUCCESS);
    EXPECT(aclrtRecordEvent(ev, stream), ACL_SUCCESS);
    EXPECT(aclrtSynchronizeEvent(ev), ACL_SUCCESS);
    aclrtEventRecordedStatus st = ACL_EVENT_RECORDED_STATUS_NOT_READY;
    EXPECT(aclrtQueryEventStatus(ev, &st), ACL_SUCCESS);
    if (st != ACL_EVENT_RECORDED_STATUS_COMPLETE || calls != 1) { printf("FAIL event/host func\n"); failures++; }

    float back[1000];
    EXPECT(aclrtMemcpy(back, sizeof back, dptr, 4000, ACL_MEMCPY_DEVICE_TO_HOST), ACL_SUCCESS);
    if (back[0] != 0.0f || back[99] != 0.0f || back[100] != 100.0f || back[999] != 999.0f) {
        printf("FAIL data %f %f %f\n", back[0], back[100], back[999]);
        failures++;
    }

    /* Error paths: nothing here may crash. */
    EXPECT(aclrtMemcpy(back, 8, dptr, 16, ACL_MEMCPY_DEVICE_TO_HOST), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtMemcpy(back, sizeof back, (char *)dptr + 3000, 2000, ACL_MEMCPY_DEVICE_TO_HOST), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtMemcpy(back, sizeof back, dptr, 16, 42), ACL_ERROR_INVALID_PARAM);
    EXPECT(aclrtSynchronizeStreamWithTimeout(stream, -7), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtRecordEvent((aclrtEvent)0x1234, stream), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtFree(dptr), ACL_SUCCESS);
    EXPECT(aclrtFree(dptr), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtMemcpy(dptr, 16, back, 16, ACL_MEMCPY_HOST_TO_DEVICE), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtFree(back), ACL_ERROR_RT_PARAM_INVALID);
    EXPECT(aclrtProcessReport(0), ACL_ERROR_INVALID_PARAM);

    HcclRootInfo root;
    if (HcclGetRootInfo(&root) != HCCL_SUCCESS) { printf("FAIL HcclGetRootInfo\n"); failures++; }
    HcclCommConfig cfg;
    HcclCommConfigInit(&cfg);
    if (cfg.hcclBufferSize != HCCL_COMM_BUFFSIZE_CONFIG_NOT_SET) { printf("FAIL HcclCommConfigInit\n"); failures++; }

    EXPECT(aclrtDestroyEvent(ev), ACL_SUCCESS);
    EXPECT(aclrtFreeHost(host), ACL_SUCCESS);
    EXPECT(aclrtDestroyStream(stream), ACL_SUCCESS);
    EXPECT(aclrtResetDevice(1), ACL_SUCCESS);
    EXPECT(aclFinalize(), ACL_SUCCESS);
    EXPECT(aclFinalize(), ACL_ERROR_REPEAT_FINALIZE);

    printf("%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
