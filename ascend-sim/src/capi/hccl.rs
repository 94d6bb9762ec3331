//! HCCL entry points. The collectives arrive with the HCCL issue; until then each returns
//! `HCCL_E_NOT_SUPPORT` with a message, so a client learns at once rather than hanging.

use crate::fail::{entry_with, fail};
use ascend_sys::*;
use std::ffi::{c_char, c_void, CString};
use std::sync::OnceLock;

macro_rules! not_supported {
    ($($name:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> HcclResult {
            $(let _ = $arg;)*
            entry_with(stringify!($name), HCCL_E_INTERNAL, || {
                fail(HCCL_E_NOT_SUPPORT, "HCCL collectives are not implemented by this simulator build yet")
            })
        }
    )*};
}

not_supported! {
    HcclGetRootInfo(rootInfo: *mut HcclRootInfo);
    HcclCommInitRootInfo(nRanks: u32, rootInfo: *const HcclRootInfo, rank: u32, comm: *mut HcclComm);
    HcclCommInitRootInfoConfig(nRanks: u32, rootInfo: *const HcclRootInfo, rank: u32, config: *const HcclCommConfig, comm: *mut HcclComm);
    HcclCommInitClusterInfo(clusterInfo: *const c_char, rank: u32, comm: *mut HcclComm);
    HcclCommInitClusterInfoConfig(clusterInfo: *const c_char, rank: u32, config: *mut HcclCommConfig, comm: *mut HcclComm);
    HcclCreateSubCommConfig(comm: *mut HcclComm, rankNum: u32, rankIds: *mut u32, subCommId: u64, subCommRankId: u32, config: *mut HcclCommConfig, subComm: *mut HcclComm);
    HcclCommInitAll(ndev: u32, devices: *mut i32, comms: *mut HcclComm);
    HcclCommDestroy(comm: HcclComm);
    HcclAllReduce(sendBuf: *mut c_void, recvBuf: *mut c_void, count: u64, dataType: HcclDataType, op: HcclReduceOp, comm: HcclComm, stream: aclrtStream);
    HcclBroadcast(buf: *mut c_void, count: u64, dataType: HcclDataType, root: u32, comm: HcclComm, stream: aclrtStream);
    HcclReduceScatter(sendBuf: *mut c_void, recvBuf: *mut c_void, recvCount: u64, dataType: HcclDataType, op: HcclReduceOp, comm: HcclComm, stream: aclrtStream);
    HcclReduceScatterV(sendBuf: *mut c_void, sendCounts: *const c_void, sendDispls: *const c_void, recvBuf: *mut c_void, recvCount: u64, dataType: HcclDataType, op: HcclReduceOp, comm: HcclComm, stream: aclrtStream);
    HcclAllGather(sendBuf: *mut c_void, recvBuf: *mut c_void, sendCount: u64, dataType: HcclDataType, comm: HcclComm, stream: aclrtStream);
    HcclAllGatherV(sendBuf: *mut c_void, sendCount: u64, recvBuf: *mut c_void, recvCounts: *const c_void, recvDispls: *const c_void, dataType: HcclDataType, comm: HcclComm, stream: aclrtStream);
    HcclScatter(sendBuf: *mut c_void, recvBuf: *mut c_void, recvCount: u64, dataType: HcclDataType, root: u32, comm: HcclComm, stream: aclrtStream);
    HcclReduce(sendBuf: *mut c_void, recvBuf: *mut c_void, count: u64, dataType: HcclDataType, op: HcclReduceOp, root: u32, comm: HcclComm, stream: aclrtStream);
    HcclAlltoAll(sendBuf: *const c_void, sendCount: u64, sendType: HcclDataType, recvBuf: *const c_void, recvCount: u64, recvType: HcclDataType, comm: HcclComm, stream: aclrtStream);
    HcclAlltoAllV(sendBuf: *const c_void, sendCounts: *const c_void, sdispls: *const c_void, sendType: HcclDataType, recvBuf: *const c_void, recvCounts: *const c_void, rdispls: *const c_void, recvType: HcclDataType, comm: HcclComm, stream: aclrtStream);
    HcclAlltoAllVC(sendBuf: *const c_void, sendCountMatrix: *const c_void, sendType: HcclDataType, recvBuf: *const c_void, recvType: HcclDataType, comm: HcclComm, stream: aclrtStream);
    HcclBarrier(comm: HcclComm, stream: aclrtStream);
    HcclSend(sendBuf: *mut c_void, count: u64, dataType: HcclDataType, destRank: u32, comm: HcclComm, stream: aclrtStream);
    HcclRecv(recvBuf: *mut c_void, count: u64, dataType: HcclDataType, srcRank: u32, comm: HcclComm, stream: aclrtStream);
    HcclBatchSendRecv(sendRecvInfo: *mut HcclSendRecvItem, itemNum: u32, comm: HcclComm, stream: aclrtStream);
    HcclGetRankSize(comm: HcclComm, rankSize: *mut u32);
    HcclGetRankId(comm: HcclComm, rank: *mut u32);
    HcclGetCommAsyncError(comm: HcclComm, asyncError: *mut HcclResult);
    HcclGetCommName(comm: HcclComm, commName: *mut c_char);
    HcclSetConfig(config: HcclConfig, configValue: HcclConfigValue);
    HcclGetConfig(config: HcclConfig, configValue: *mut HcclConfigValue);
    HcclCommSuspend(comm: HcclComm);
    HcclCommResume(comm: HcclComm);
    HcclGroupStart();
    HcclGroupEnd();
}

/// `HcclGetErrorString`: the C name of a result code ("HCCL_E_UNKNOWN" for one it does not know).
#[no_mangle]
pub unsafe extern "C" fn HcclGetErrorString(code: HcclResult) -> *const c_char {
    static NAMES: OnceLock<Vec<(i32, CString)>> = OnceLock::new();
    static UNKNOWN: &std::ffi::CStr = c"HCCL_E_UNKNOWN";
    let names = NAMES.get_or_init(|| {
        (0..=HCCL_E_RESERVED)
            .filter_map(|c| hccl_result_name(c).map(|n| (c, CString::new(n).unwrap_or_default())))
            .collect()
    });
    names
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(UNKNOWN.as_ptr(), |(_, n)| n.as_ptr())
}

/// `HcclGetCommConfigCapability`: the highest `HcclCommConfigCapability` supported plus one; none yet.
#[no_mangle]
pub unsafe extern "C" fn HcclGetCommConfigCapability() -> u32 {
    0
}
