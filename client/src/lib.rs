//! A small client for Cairn and etcd: one connection, the generated etcd v3 gRPC clients on
//! it, and helpers for the common KV calls. The tests use the independent `etcd-client`
//! crate and etcdctl instead, so that Cairn is checked against clients it did not write.

use bytes::Bytes;
use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::{Channel, Endpoint};

pub use cairn_proto;

/// A connection to one endpoint with the service clients on it (cheap to clone).
#[derive(Clone)]
pub struct Client {
    pub kv: KvClient<Channel>,
    pub maintenance: MaintenanceClient<Channel>,
    pub cluster: ClusterClient<Channel>,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port` or `host:port`).
    pub async fn connect(endpoint: &str) -> Result<Client, tonic::transport::Error> {
        let url = if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") };
        let channel = Endpoint::from_shared(url)?.connect().await?;
        Ok(Client {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(usize::MAX),
            maintenance: MaintenanceClient::new(channel.clone()),
            cluster: ClusterClient::new(channel),
        })
    }

    /// Puts `value` at `key`; returns the revision of the write.
    pub async fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<i64, tonic::Status> {
        let r = self.kv.put(pb::PutRequest { key: key.into(), value: value.into(), ..Default::default() }).await?;
        Ok(r.into_inner().header.map_or(0, |h| h.revision))
    }

    /// Linearizable get of one key.
    pub async fn get(&mut self, key: impl Into<Bytes>) -> Result<Option<cairn_proto::mvccpb::KeyValue>, tonic::Status> {
        let r = self.kv.range(pb::RangeRequest { key: key.into(), ..Default::default() }).await?;
        Ok(r.into_inner().kvs.into_iter().next())
    }

    /// Deletes one key; returns how many keys were deleted.
    pub async fn delete(&mut self, key: impl Into<Bytes>) -> Result<i64, tonic::Status> {
        let r = self.kv.delete_range(pb::DeleteRangeRequest { key: key.into(), ..Default::default() }).await?;
        Ok(r.into_inner().deleted)
    }

    /// The endpoint's Status.
    pub async fn status(&mut self) -> Result<pb::StatusResponse, tonic::Status> {
        Ok(self.maintenance.status(pb::StatusRequest {}).await?.into_inner())
    }
}
