"""The part of GitLab's GraphQL schema that GitLab's editor extensions use, and its limits.

Types and field names are GitLab's (``doc/api/graphql/reference``), so the queries the
Language Server and the VS Code / JetBrains extensions send validate unchanged; anything else
is a GraphQL error, as on GitLab for an unknown field. The resolvers live with the endpoint
(``api/graphql_endpoint.py``); this module holds the schema and the query limits, built on
graphql-core (the reference implementation's Python port): parsing, validation and execution
are the library's, nothing hand-written.

Limits, GitLab's values for authenticated requests: depth 15, complexity 250 (here: the number
of fields a query selects, fragments expanded), and at most :data:`MAX_TOKENS` lexical tokens
(the parser stops there, so a huge query costs nothing to refuse). The body size is the
endpoint's limit.
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    build_schema,
)

MAX_DEPTH: Final = 15
MAX_COMPLEXITY: Final = 250
MAX_TOKENS: Final = 5_000

SDL: Final = '''
"""A global id, gid://gitlab/User/<id>."""
scalar UserID
"""A global id of a resource chat is about (issue, epic, ...), gid://gitlab/<Type>/<id>."""
scalar AiModelID
"""A global id, gid://gitlab/Project/<id>."""
scalar ProjectID
"""Any JSON value."""
scalar JSON
"""An ISO 8601 time."""
scalar Time
"""A global id of a chat thread (Enclave keeps none: always null)."""
scalar AiConversationThreadID

type Query {
  "The user the token belongs to."
  currentUser: CurrentUser
  "Whether a feature flag is on (instance-wide)."
  featureFlagEnabled(name: String!): Boolean!
  "The instance's version and flags."
  metadata: Metadata
  "A project; Enclave has none, so every path stands for the instance's Duo settings."
  project(fullPath: ID!): Project
  "The caller's recent Duo Chat messages, oldest first."
  aiMessages(
    requestIds: [ID!]
    roles: [AiMessageRole!]
    threadId: AiConversationThreadID
    conversationType: AiConversationsThreadsConversationType
    agentVersionId: ID
    after: String
    before: String
    first: Int
    last: Int
  ): AiChatMessageConnection!
}

type Mutation {
  "Ask Duo Chat; the answer is read with aiMessages (or the aiCompletionResponse subscription)."
  aiAction(input: AiActionInput!): AiActionPayload
}

type Subscription {
  "Duo Chat's answers as they are generated (over ActionCable, /-/cable)."
  aiCompletionResponse(
    userId: UserID
    aiAction: AiAction
    clientSubscriptionId: String
    resourceId: AiModelID
    htmlResponse: Boolean
  ): AiMessage
}

enum AiAction {
  CHAT
}

type AiMessage {
  id: ID
  requestId: String
  role: AiMessageRole!
  content: String
  contentHtml: String
  timestamp: Time!
  errors: [String!]
  type: String
  chunkId: Int
  threadId: AiConversationThreadID
  extras: AiMessageExtras
}

type CurrentUser {
  id: UserID!
  username: String!
  name: String!
  publicEmail: String
  webUrl: String!
  duoCodeSuggestionsAvailable: Boolean!
  duoChatAvailable: Boolean!
  duoChatAvailableFeatures: [String!]!
  codeSuggestionsContexts: [String!]!
}

type MetadataFeatureFlag {
  name: String!
  enabled: Boolean!
}

type Kas {
  enabled: Boolean!
  externalUrl: String
  externalK8sProxyUrl: String
  version: String
}

type Metadata {
  version: String!
  revision: String!
  enterprise: Boolean!
  kas: Kas!
  featureFlags(names: [String!]!): [MetadataFeatureFlag!]!
}

type Project {
  id: ProjectID!
  fullPath: ID!
  duoFeaturesEnabled: Boolean
}

enum AiMessageRole {
  USER
  ASSISTANT
  SYSTEM
}

enum AiConversationsThreadsConversationType {
  DUO_CHAT_LEGACY
  DUO_CHAT
  DUO_CODE_REVIEW
  DUO_QUICK_CHAT
}

enum AiAdditionalContextCategory {
  FILE
  SNIPPET
  MERGE_REQUEST
  ISSUE
  DEPENDENCY
  LOCAL_GIT
  TERMINAL
  USER_RULE
  REPOSITORY
  DIRECTORY
  AGENT_USER_ENVIRONMENT
  ATTACHMENTS
}

input AiCurrentFileInput {
  fileName: String!
  selectedText: String!
  contentAboveCursor: String
  contentBelowCursor: String
}

input AiAdditionalContextInput {
  category: AiAdditionalContextCategory!
  id: String!
  content: String!
  metadata: JSON
}

input AiChatInput {
  resourceId: AiModelID
  namespaceId: ID
  content: String!
  agentVersionId: ID
  currentFile: AiCurrentFileInput
  additionalContext: [AiAdditionalContextInput!]
  useCodebaseAsContext: Boolean
  currentBranch: String
}

input AiActionInput {
  chat: AiChatInput
  clientMutationId: String
  clientSubscriptionId: String
  platformOrigin: String
  projectId: ProjectID
  rootNamespaceId: ID
  conversationType: AiConversationsThreadsConversationType
  threadId: AiConversationThreadID
  additionalContext: [AiAdditionalContextInput!]
}

type AiActionPayload {
  clientMutationId: String
  requestId: String
  threadId: AiConversationThreadID
  errors: [String!]!
}

type AiAdditionalContext {
  id: ID!
  category: AiAdditionalContextCategory!
  content: String
  metadata: JSON
}

type AiMessageExtras {
  sources: [JSON!]
  hasFeedback: Boolean
  additionalContext: [AiAdditionalContext!]
}

type AiChatMessage {
  id: ID
  requestId: String
  role: AiMessageRole!
  content: String
  contentHtml: String
  timestamp: Time!
  errors: [String!]
  type: String
  chunkId: Int
  threadId: AiConversationThreadID
  extras: AiMessageExtras
}

type PageInfo {
  hasNextPage: Boolean!
  hasPreviousPage: Boolean!
  startCursor: String
  endCursor: String
}

type AiChatMessageConnection {
  nodes: [AiChatMessage!]!
  pageInfo: PageInfo!
}
'''

SCHEMA: Final[GraphQLSchema] = build_schema(SDL)


class _Exceeded(Exception):
    pass


class QueryLimits(ValidationRule):
    """Refuses an operation deeper than :data:`MAX_DEPTH` or selecting more fields than
    :data:`MAX_COMPLEXITY` (fragments expanded; counting stops at the limit, so a fragment
    bomb costs no more than a legal query)."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
        self._fields = 0
        self._deepest = 0
        with contextlib.suppress(_Exceeded):
            self._walk(node.selection_set, 1, ())
        if self._deepest > MAX_DEPTH:
            self.report_error(
                GraphQLError(
                    f"Query has depth of {self._deepest}, which exceeds max depth of {MAX_DEPTH}",
                    node,
                )
            )
        elif self._fields > MAX_COMPLEXITY:
            self.report_error(
                GraphQLError(
                    f"Query selects more than {MAX_COMPLEXITY} fields (fragments counted where "
                    f"they are spread), which exceeds max complexity of {MAX_COMPLEXITY}",
                    node,
                )
            )

    def _walk(
        self, selection_set: SelectionSetNode | None, depth: int, fragments: tuple[str, ...]
    ) -> None:
        if selection_set is None:
            return
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                self._fields += 1
                self._deepest = max(self._deepest, depth)
                if self._fields > MAX_COMPLEXITY or self._deepest > MAX_DEPTH:
                    raise _Exceeded
                self._walk(selection.selection_set, depth + 1, fragments)
            elif isinstance(selection, InlineFragmentNode):
                self._walk(selection.selection_set, depth, fragments)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.context.get_fragment(name)
                # A cycle is NoFragmentCyclesRule's to report; here it must not loop.
                if fragment is not None and name not in fragments:
                    self._walk(fragment.selection_set, depth, (*fragments, name))
