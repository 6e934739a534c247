//! One HTTP/1.1 `GET` over a connection the dialer made, with a time limit and a size limit, and
//! the local times around it (for the clock check).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::header::{ACCEPT, DATE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::net::Conn;

/// The largest document accepted (a JWKS of ~90 keys is ~40 KiB).
const MAX_BODY: usize = 1 << 20;

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub date: Option<String>,
    pub body: Bytes,
    /// This host's clock when the request was sent and when the answer's head arrived.
    pub sent_at: SystemTime,
    pub received_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The connection ended before any answer: what an allow list that closes does to a plain
    /// HTTP request.
    #[error("the connection was closed before any answer")]
    Closed,
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The TLS 1.3 server refused the (absent) client certificate after the handshake.
    #[error("the listener demands a client certificate (discovery.client_ca)")]
    ClientCertificate,
    #[error("the answer is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("broken HTTP answer: {0}")]
    Http(String),
    /// A plain HTTP request got a TLS record back.
    #[error("this port speaks TLS: use https://")]
    SpeaksTls,
}

/// `GET path` on `conn` with `Host: authority`.
pub async fn get(
    conn: Conn,
    authority: &str,
    path: &str,
    timeout: Duration,
) -> Result<Answer, FetchError> {
    let request = Request::get(path)
        .header(HOST, authority)
        .header(ACCEPT, "application/json")
        .header(
            USER_AGENT,
            concat!("tfe-oidc-validate/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let exchange = async {
        match conn {
            Conn::Plain(tcp) => send(tcp, request).await,
            Conn::Tls(tls) => send(tls, request).await,
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| FetchError::TimedOut(timeout))?
}

async fn send<S>(stream: S, request: Request<Empty<Bytes>>) -> Result<Answer, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(classify)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let sent_at = SystemTime::now();
    let response = sender.send_request(request).await.map_err(classify)?;
    let received_at = SystemTime::now();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (status, date) = (response.status().as_u16(), header(DATE));
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => FetchError::TooLarge,
            Err(e) => FetchError::Http(e.to_string()),
        })?
        .to_bytes();
    Ok(Answer {
        status,
        date,
        body,
        sent_at,
        received_at,
    })
}

fn classify(error: hyper::Error) -> FetchError {
    use std::error::Error as _;
    let io_closed = error
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            )
        });
    if matches!(
        tls_error(&error),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
        ))
    ) {
        return FetchError::ClientCertificate;
    }
    if error.is_incomplete_message() || error.is_closed() || error.is_canceled() || io_closed {
        FetchError::Closed
    } else {
        FetchError::Http(error.to_string())
    }
}

/// The rustls error under a hyper error, if any.
fn tls_error(error: &hyper::Error) -> Option<&rustls::Error> {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(e) = source {
        let io = e.downcast_ref::<std::io::Error>();
        if let Some(tls) = io.and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>()) {
            return Some(tls);
        }
        source = e.source();
    }
    None
}
