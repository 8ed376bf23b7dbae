//! Toolkits this client hosts for the room's other participants.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use roomd_sync::room_protocol::{Content, Control, ErrorCode};
use tokio::sync::mpsc;

use crate::driver::Cmd;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// A call of one of this client's tools.
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// The tool's name.
    pub tool: String,
    /// The call's id, the caller's.
    pub tool_call_id: String,
    /// The input: `json` content for a plain call.
    pub arguments: Content,
    /// The participant calling.
    pub caller_id: Option<String>,
    /// The participant it calls for, if any.
    pub on_behalf_of_id: Option<String>,
}

/// A tool's failure, answered to the caller as `error` content.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolError {
    /// An SDK error code, if one fits.
    pub code: Option<ErrorCode>,
    /// What went wrong.
    pub message: String,
}

impl ToolError {
    /// A failure with no particular code.
    pub fn new(message: impl Into<String>) -> ToolError {
        ToolError {
            code: None,
            message: message.into(),
        }
    }

    /// A failure with an SDK error code.
    pub fn with_code(code: ErrorCode, message: impl Into<String>) -> ToolError {
        ToolError {
            code: Some(code),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, ToolError>> + Send>>;

/// What runs a tool's calls.
#[derive(Clone)]
pub(crate) enum Handler {
    /// One input, one answer.
    Plain(Arc<dyn Fn(ToolCall) -> BoxFuture<Content> + Send + Sync>),
    /// An answer streamed in chunks, and the input's chunks if it is a stream.
    Streaming(Arc<dyn Fn(ToolCall, ToolStream) -> BoxFuture<()> + Send + Sync>),
}

/// A streamed call's two directions, for a [`Tool::streaming`] handler: the input's chunks
/// (when the caller streams its input) and the answer's.
#[derive(Debug)]
pub struct ToolStream {
    pub(crate) input: Option<mpsc::Receiver<Content>>,
    pub(crate) out: mpsc::Sender<Cmd>,
    pub(crate) session: u64,
    pub(crate) id: u64,
    pub(crate) tool_call_id: String,
}

impl ToolStream {
    /// Sends a chunk of the answer (after which the caller reads it as it comes).
    pub async fn send(&self, chunk: Content) -> Result<(), ToolError> {
        self.out
            .send(Cmd::RespondChunk {
                session: self.session,
                id: self.id,
                tool_call_id: self.tool_call_id.clone(),
                content: chunk,
            })
            .await
            .map_err(|_| ToolError::new("the client is closed"))
    }

    /// The next chunk of a streamed input; `None` once the caller closed it, or if the input
    /// was not a stream (its content is then the call's `arguments`).
    pub async fn next_input(&mut self) -> Option<Content> {
        let c = self.input.as_mut()?.recv().await?;
        match c {
            Content::Control(Control::Close { .. }) => {
                self.input = None;
                None
            }
            c => Some(c),
        }
    }
}

/// A tool: its description and its handler.
#[derive(Clone)]
pub struct Tool {
    pub(crate) name: String,
    title: String,
    description: String,
    input_schema: Option<Value>,
    pub(crate) handler: Handler,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool").field("name", &self.name).finish()
    }
}

impl Tool {
    /// A tool answering with whatever content its handler makes of the call.
    pub fn new<F, Fut>(name: impl Into<String>, handler: F) -> Tool
    where
        F: Fn(ToolCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Content, ToolError>> + Send + 'static,
    {
        Tool::with_handler(
            name.into(),
            Handler::Plain(Arc::new(move |call| Box::pin(handler(call)))),
        )
    }

    fn with_handler(name: String, handler: Handler) -> Tool {
        Tool {
            title: name.clone(),
            name,
            description: String::new(),
            input_schema: None,
            handler,
        }
    }

    /// A tool whose answer is a stream: its handler sends chunks through the [`ToolStream`]
    /// and reads a streamed input from it; the client answers the call `control{open}` first
    /// and closes the stream when the handler returns (after an `error` chunk if it failed).
    ///
    /// ```no_run
    /// # async fn example(client: roomd_client::RoomClient) -> Result<(), roomd_client::Error> {
    /// use roomd_client::{Content, Tool, ToolError, Toolkit};
    ///
    /// let shout = Tool::streaming("shout", |_call, mut stream| async move {
    ///     while let Some(Content::Text(t)) = stream.next_input().await {
    ///         stream.send(Content::Text(t.to_uppercase())).await?;
    ///     }
    ///     Ok::<_, ToolError>(())
    /// });
    /// let _hosted = client.host(Toolkit::new("voice").tool(shout)).await?;
    /// # Ok(()) }
    /// ```
    pub fn streaming<F, Fut>(name: impl Into<String>, handler: F) -> Tool
    where
        F: Fn(ToolCall, ToolStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ToolError>> + Send + 'static,
    {
        Tool::with_handler(
            name.into(),
            Handler::Streaming(Arc::new(move |call, stream| {
                Box::pin(handler(call, stream))
            })),
        )
    }

    /// A tool with a typed handler: its JSON input is read as `I` (a call whose input does not
    /// fit is answered `INVALID_REQUEST`) and its output written as JSON.
    pub fn typed<I, O, F, Fut>(name: impl Into<String>, handler: F) -> Tool
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, ToolError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        Tool::new(name, move |call: ToolCall| {
            let handler = handler.clone();
            async move {
                let input = match call.arguments {
                    Content::Json(v) => v,
                    Content::Empty => Value::Null,
                    other => {
                        return Err(ToolError::with_code(
                            ErrorCode::InvalidRequest,
                            format!("expected json input, got {}", kind_of(&other)),
                        ))
                    }
                };
                let input: I = serde_json::from_value(input).map_err(|e| {
                    ToolError::with_code(ErrorCode::InvalidRequest, format!("invalid input: {e}"))
                })?;
                let out = handler(input).await?;
                let out = serde_json::to_value(out)
                    .map_err(|e| ToolError::new(format!("the output does not serialise: {e}")))?;
                Ok(Content::Json(out))
            }
        })
    }

    /// Sets the title other participants see.
    pub fn title(mut self, title: impl Into<String>) -> Tool {
        self.title = title.into();
        self
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Tool {
        self.description = description.into();
        self
    }

    /// Sets the JSON schema of the input (shown to callers as the tool's `input_spec`).
    pub fn input_schema(mut self, schema: Value) -> Tool {
        self.input_schema = Some(schema);
        self
    }

    fn describe(&self) -> Value {
        let stream = matches!(self.handler, Handler::Streaming(_));
        let input_spec = self
            .input_schema
            .as_ref()
            .map(|s| json!({"types": ["json"], "stream": false, "schema": s}));
        let output_spec =
            stream.then(|| json!({"types": ["json", "text", "binary"], "stream": true}));
        json!({
            "title": self.title,
            "description": self.description,
            "input_spec": input_spec,
            "output_spec": output_spec,
            "defs": null,
            "strict": false,
        })
    }
}

fn kind_of(c: &Content) -> &'static str {
    match c {
        Content::Json(_) => "json",
        Content::Text(_) => "text",
        Content::Binary { .. } => "binary",
        Content::File { .. } => "file",
        Content::Link { .. } => "link",
        Content::Empty => "empty",
        Content::Error { .. } => "error",
        Content::Control(_) => "control",
        Content::Raw(_) => "raw",
    }
}

/// A toolkit: named tools other participants call through the room. Register it with
/// [`crate::RoomClient::host`]; the client registers it again after a reconnect.
///
/// ```no_run
/// # async fn example(client: roomd_client::RoomClient) -> Result<(), roomd_client::Error> {
/// use roomd_client::{Tool, ToolError, Toolkit};
/// use serde_json::{json, Value};
///
/// let toolkit = Toolkit::new("words").tool(
///     Tool::typed("count", |input: Value| async move {
///         let text = input["text"].as_str().unwrap_or_default();
///         Ok::<_, ToolError>(json!({ "words": text.split_whitespace().count() }))
///     })
///     .description("counts the words of a text"),
/// );
/// let hosted = client.host(toolkit).await?;
/// # drop(hosted); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Toolkit {
    pub(crate) name: String,
    title: String,
    description: String,
    public: bool,
    pub(crate) tools: BTreeMap<String, Tool>,
}

impl Toolkit {
    /// A public toolkit named `name`, with no tools yet.
    pub fn new(name: impl Into<String>) -> Toolkit {
        let name = name.into();
        Toolkit {
            title: name.clone(),
            name,
            description: String::new(),
            public: true,
            tools: BTreeMap::new(),
        }
    }

    /// Adds a tool (replacing one of the same name).
    pub fn tool(mut self, tool: Tool) -> Toolkit {
        self.tools.insert(tool.name.clone(), tool);
        self
    }

    /// Sets the title.
    pub fn title(mut self, title: impl Into<String>) -> Toolkit {
        self.title = title.into();
        self
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Toolkit {
        self.description = description.into();
        self
    }

    /// Makes the toolkit private: listed only to this participant, callable by name.
    pub fn private(mut self) -> Toolkit {
        self.public = false;
        self
    }

    /// The toolkit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `room.register_toolkit` request.
    pub(crate) fn registration(&self) -> Value {
        let tools: serde_json::Map<String, Value> = self
            .tools
            .iter()
            .map(|(n, t)| (n.clone(), t.describe()))
            .collect();
        json!({
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "tools": tools,
            "public": self.public,
            "annotations": {},
        })
    }
}
