// Everything the gate needs in one subscription deployment (`azd up`, or
// `az deployment sub create -f infra/main.bicep`), and with deployWalkthrough the walkthrough's
// registries and its hello-world task to try it on.
//
//   rg-<env>                     the gate: its identity and the runner identity, Function app
//                                (Flex Consumption), storage (queues, ledger table, logs, dead
//                                letters), Application Insights, Key Vault, the runner registry
//                                validations execute on
//   rg-<env>-walkthrough         (deployWalkthrough) public, base-artifacts and team registries,
//                                hello-world task with a base-image trigger
//   upstream / base-artifacts /  their resource groups get the gate's custom roles and grants;
//   downstream                   the upstream one also the Event Grid system topic
//
// No secret is written here or into app settings: every connection is identity-based and every
// grant is a role assignment named guid(scope, principal, role) on one resource, never on the
// subscription or a resource group. tests/unit/test_infra.py checks these promises.

targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; with the subscription and location it seeds unique names.')
param environmentName string

@minLength(1)
@description('Region of every resource (one that offers Flex Consumption).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Name of the gate\'s resource group; empty: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Also deploy the walkthrough: public, base-artifacts and team registries and the hello-world task.')
param deployWalkthrough bool = false

@description('Resource id of the upstream ACR whose pushes reach the gate (ignored with deployWalkthrough). Empty: no ACR upstream, the watch timer polls (Docker Hub, GHCR).')
param upstreamRegistryId string = ''

@description('Resource id of the base-artifacts ACR the gate imports into (ignored with deployWalkthrough, required without).')
param baseArtifactsRegistryId string = ''

@description('Resource id of an ACR whose tasks the gate runs after a promotion (ignored with deployWalkthrough: the team registry). Empty: none.')
param downstreamRegistryId string = ''

@description('How the gate promotes a validated digest into base-artifacts (GATE_PROMOTE_MODE): ACR import, or a registry-to-registry push by the gate.')
@allowed([
  'import'
  'push'
])
param promoteMode string = 'import'

@description('Repositories of base-artifacts the gate promotes into; with promoteMode push, the only ones it may push to.')
param promotedRepositories array = [
  'node'
]

// Event Grid takes at most 25 values across all advanced filters of one subscription
// ("25 advanced filters and 25 filter values across all the filters per Event Grid subscription":
// learn.microsoft.com/azure/event-grid/event-filtering, "Limitations"), and the push subscription
// has one StringIn filter with these values.
@minLength(1)
@maxLength(25)
@description('Repositories of the upstream registry whose pushes are delivered (Event Grid StringIn filter on data.target.repository): 1 to 25, Event Grid\'s limit of filter values per subscription. For more, split them over a second deployment or let the watch timer poll the rest.')
param watchedRepositories array = [
  'node'
]

@description('Names of the Key Vault secrets validation runs read: the upstream credentials gate.yaml names (registries[].username_secret and password_secret). The runner identity may read these secrets and no other; each must exist in the vault before deployment. Empty: it reads none.')
param runnerSecretNames array = []

@description('Create the Event Grid subscription to on_push. It needs the function deployed first: the postdeploy hook of azure.yaml turns it on.')
param subscribeToEvents bool = false

@description('Name of the upstream registry\'s existing Event Grid system topic, if it has one (a registry has at most one): it is referenced as it is, never changed or deleted, and must have a system-assigned identity. Empty: the registry has none and the deployment creates evgt-<registry>.')
param upstreamSystemTopicName string = ''

// The concurrency budget: how many validation task runs may run at once on the runner registry.
// ACR documents no per-SKU limit on concurrent task runs that we found (container-registry-skus
// and its limits table list storage, operations, bandwidth, webhooks, replications, endpoints),
// so the budget is the operator's, not a platform limit: 25 keeps the queue trigger's 4 + 2
// messages per instance (host.json) on four instances, plus the one re-validation the watch timer
// runs inline. The instance cap and the queue batch below are derived from it.
@minValue(3)
@maxValue(1000)
@description('Validation task runs the gate may have running at once on its runner registry (3-1000). The Function app\'s maximumInstanceCount and the queue trigger\'s batchSize/newBatchThreshold are derived from it (docs/deploy.md, "Concurrency budget").')
param maxConcurrentTaskRuns int = 25

@description('Keep one instance always ready for the Event Grid trigger on_push (Flex Consumption alwaysReady, billed while idle). Off: a cold start may outlast Event Grid\'s 30 s delivery timeout, and that delivery is retried (docs/deploy.md, "Always-ready instance").')
param onPushAlwaysReady bool = false

@description('NCRONTAB schedule of the upstream poll (GATE_WATCH_SCHEDULE).')
param watchSchedule string = '0 */15 * * * *'

@description('Seconds a worker waits on another worker\'s decision (GATE_WORKER_WAIT_SECONDS).')
param workerWaitSeconds int = 20

@description('HTTP body limit in bytes (GATE_MAX_BODY_BYTES).')
param maxBodyBytes int = 65536

@description('Default page size of GET /api/gates (GATE_PAGE_SIZE).')
param pageSize int = 50

@description('Endpoint of an Event Grid custom topic for outcome events (GATE_OUTCOME_TOPIC_ENDPOINT); empty: none.')
param outcomeTopicEndpoint string = ''

@description('The gate configuration file, relative to the app folder (GATE_CONFIG).')
param gateConfigPath string = 'gate.yaml'

@description('Resource id of an action group the audit alert rules notify (docs/monitoring.md); empty: the alerts fire in Azure Monitor only.')
param alertActionGroupId string = ''

@description('Application (client) id of the gate\'s Microsoft Entra app registration with the app roles Gate.Read and Gate.Operate (docs/guide/functions.md, "Who may call the API"). Set: App Service authentication refuses unauthenticated HTTP calls with 401 and the functions authorise by app role (GATE_AUTH_MODE=entra). Empty: function keys only.')
param authClientId string = ''

@description('Directory (tenant) id (a GUID) of that app registration; empty: this deployment\'s tenant. Not \'common\' or \'organizations\': the functions accept callers of this one tenant only.')
param authTenantId string = ''

@description('Application ID URI of that app registration (what operators get tokens for); empty: api://<authClientId>.')
param authApplicationIdUri string = ''

// Flex Consumption runs Python 3.13 (Azure/azure-functions-python-worker#1588, a maintainer);
// from 3.13 the app brings its own worker, azure-functions-runtime in requirements.txt
// (learn.microsoft.com/azure/azure-functions/python-313-changes).
@description('Python version of the Function app (Flex Consumption).')
@allowed([
  '3.13' // the app requires Python 3.13 (pyproject.toml requires-python)
])
param pythonVersion string = '3.13'

@description('SKU of the registries this deployment creates (the runner and the walkthrough\'s).')
@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param registrySku string = 'Basic'

@description('Build context of the walkthrough\'s hello-world task: a public Git repository (URL#branch) with its Dockerfile.')
param helloWorldContextUrl string = 'https://github.com/importing-public-content/hello-world.git#main'

var token = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var gateResourceGroupName = empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
var walkthroughResourceGroupName = '${gateResourceGroupName}-walkthrough'

// Names the app binds to or reads by default: the queue bindings of function_app.py
// (gate.config.app_settings.QUEUE and POISON_QUEUE), the Table ledger's table and log container
// (azure.ledger in gate.yaml), the Event Grid triggered function. tests/unit/test_infra.py holds
// them against the code.
var queueNames = [
  'gate-requests'
  'gate-requests-poison'
]
var ledgerTable = 'gaterecords'
var logContainer = 'gatelogs'
var deploymentContainer = 'app-package'
var deadLetterContainer = 'eventgrid-deadletter'
// With authentication on, the functions check again that a caller's principal is of this tenant
// and for one of these audiences (gate/entrypoints/principal.py): the same values
// app/function.bicep gives authsettingsV2. The tenant must be one tenant's GUID; the app refuses
// to start its HTTP API otherwise ('common' would make App Service check no tenant).
var authTenant = empty(authTenantId) ? tenant().tenantId : authTenantId
var authAudience = empty(authApplicationIdUri) ? 'api://${authClientId}' : authApplicationIdUri
var eventFunctionName = 'on_push'

// The concurrency budget (docs/deploy.md, "Concurrency budget"). Task runs start in two places:
// - gate_worker, the queue trigger, runs one validation per message it holds, and per instance
//   it holds at most batchSize + newBatchThreshold messages ("the maximum number of concurrent
//   messages being processed per function is batchSize plus newBatchThreshold ... If the function
//   app scales out to multiple VMs, each VM could run one instance of each queue-triggered
//   function": learn.microsoft.com/azure/azure-functions/functions-bindings-storage-queue,
//   host.json settings, batchSize), on at most maximumInstanceCount instances (the app's cap:
//   learn.microsoft.com/azure/azure-functions/flex-consumption-how-to, "Set maximum instance
//   count"; 1 to 1000: flex-consumption-plan, "Considerations");
// - the watch timer re-validates due rules inline, one after another (function_app.py
//   _revalidate), on one instance however far the app scales out
//   (learn.microsoft.com/azure/azure-functions/functions-bindings-timer, "Scale-out": "only a
//   single instance of a timer-triggered function is run across all instances. It will not
//   trigger again if there is an outstanding invocation still running").
// So instances × (batchSize + newBatchThreshold) + 1 <= maxConcurrentTaskRuns. The batch keeps
// host.json's 4 + 2 while the budget allows it; the app settings below override host.json's
// values with these (AzureFunctionsJobHost__extensions__queues__…: learn.microsoft.com/azure/
// azure-functions/functions-host-json, "Override host.json values").
var revalidationRuns = 1
var workerRuns = maxConcurrentTaskRuns - revalidationRuns
// newBatchThreshold stays between 1 and batchSize: the host refuses one above batchSize and some
// versions refuse 0 (QueuesOptions.NewBatchThreshold in Azure/azure-webjobs-sdk), hence a budget
// of at least 3 (one re-validation, one batch of 1 and a threshold of 1)
var queueBatchSize = min(4, workerRuns - 1)
var queueNewBatchThreshold = min(2, workerRuns - queueBatchSize)
var runsPerInstance = queueBatchSize + queueNewBatchThreshold
var maximumInstanceCount = workerRuns / runsPerInstance

// Flex Consumption scales HTTP, Durable and blob functions in groups and every other function on
// its own; an always-ready count for one of those is named function:<name>
// (learn.microsoft.com/azure/azure-functions/flex-consumption-plan, "Per-function scaling";
// flex-consumption-how-to, "Set always ready instance counts"). on_push is an Event Grid trigger,
// not one of the groups. It starts no task run, so it is outside the budget.
var alwaysReady = onPushAlwaysReady ? [
  {
    name: 'function:${eventFunctionName}'
    instanceCount: 1
  }
] : []

// The gate's own app settings: those gate/config/app_settings.py reads, then the deployed resources that
// gate.yaml names as ${GATE_…} (infra/walkthrough/gate.yaml uses every one). The platform ones
// are in app/function.bicep. Each resource value is also an output of the same name below, so
// `azd env get-values` gives a laptop the same environment.
var appSettings = {
  GATE_CONFIG: gateConfigPath
  // entra exactly when app/function.bicep turns App Service authentication on (same parameter):
  // only then may the functions trust the client-principal header (gate/config/app_settings.py)
  GATE_AUTH_MODE: empty(authClientId) ? 'function-key' : 'entra'
  GATE_AUTH_TENANT_ID: empty(authClientId) ? '' : authTenant
  GATE_AUTH_AUDIENCES: empty(authClientId) ? '' : '${authClientId},${authAudience}'
  GATE_WATCH_SCHEDULE: watchSchedule
  GATE_WORKER_WAIT_SECONDS: string(workerWaitSeconds)
  GATE_MAX_BODY_BYTES: string(maxBodyBytes)
  GATE_PAGE_SIZE: string(pageSize)
  GATE_OUTCOME_TOPIC_ENDPOINT: outcomeTopicEndpoint
  GATE_SUBSCRIPTION_ID: subscription().subscriptionId
  GATE_PROMOTE_MODE: promoteMode
  GATE_REGISTRY_NAME: base.name
  GATE_REGISTRY_RESOURCE_GROUP: base.resourceGroup
  GATE_REGISTRY_LOGIN_SERVER: baseAccess.outputs.loginServer
  GATE_RUNNER_REGISTRY_NAME: runner.outputs.name
  GATE_RUNNER_RESOURCE_GROUP: rg.name
  GATE_RUNNER_IDENTITY_RESOURCE_ID: runnerIdentity.outputs.id
  GATE_RUNNER_IDENTITY_CLIENT_ID: runnerIdentity.outputs.clientId
  GATE_KEY_VAULT_URL: keyVault.outputs.uri
  GATE_TABLE_ENDPOINT: storage.outputs.tableEndpoint
  GATE_UPSTREAM_LOGIN_SERVER: hasUpstream ? upstreamAccess!.outputs.loginServer : ''
  GATE_UPSTREAM_REGISTRY_ID: hasUpstream ? upstreamAccess!.outputs.id : ''
  GATE_DOWNSTREAM_REGISTRY: hasDownstream ? downstream.name : ''
  GATE_DOWNSTREAM_RESOURCE_GROUP: hasDownstream ? downstream.resourceGroup : ''
}

// Where the upstream and base-artifacts registries are: the walkthrough's, or the ids given.
// Module scopes must be known before deployment starts, so they come from parameters only.
var publicRegistryName = 'public${token}'
var baseArtifactsRegistryName = 'baseartifacts${token}'
var teamRegistryName = 'contoso${token}'
var hasUpstream = deployWalkthrough || !empty(upstreamRegistryId)
var upstreamParts = split(empty(upstreamRegistryId) ? '/subscriptions/${subscription().subscriptionId}/resourceGroups/${gateResourceGroupName}/providers/Microsoft.ContainerRegistry/registries/none' : upstreamRegistryId, '/')
var walkthroughUpstream = {
  subscriptionId: subscription().subscriptionId
  resourceGroup: walkthroughResourceGroupName
  name: publicRegistryName
}
var givenUpstream = {
  subscriptionId: upstreamParts[2]
  resourceGroup: upstreamParts[4]
  name: upstreamParts[8]
}
var upstream = deployWalkthrough ? walkthroughUpstream : givenUpstream
// without the walkthrough and without an id, the deployment stops on a registry whose name says why
var baseParts = split(empty(baseArtifactsRegistryId) ? '/subscriptions/${subscription().subscriptionId}/resourceGroups/${gateResourceGroupName}/providers/Microsoft.ContainerRegistry/registries/SetBaseArtifactsRegistryIdOrDeployWalkthrough' : baseArtifactsRegistryId, '/')
var walkthroughBase = {
  subscriptionId: subscription().subscriptionId
  resourceGroup: walkthroughResourceGroupName
  name: baseArtifactsRegistryName
}
var givenBase = {
  subscriptionId: baseParts[2]
  resourceGroup: baseParts[4]
  name: baseParts[8]
}
var base = deployWalkthrough ? walkthroughBase : givenBase
var hasDownstream = deployWalkthrough || !empty(downstreamRegistryId)
var pushMode = promoteMode == 'push'
var downstreamParts = split(empty(downstreamRegistryId) ? '/subscriptions/${subscription().subscriptionId}/resourceGroups/${gateResourceGroupName}/providers/Microsoft.ContainerRegistry/registries/none' : downstreamRegistryId, '/')
var walkthroughDownstream = {
  subscriptionId: subscription().subscriptionId
  resourceGroup: walkthroughResourceGroupName
  name: teamRegistryName
}
var givenDownstream = {
  subscriptionId: downstreamParts[2]
  resourceGroup: downstreamParts[4]
  name: downstreamParts[8]
}
var downstream = deployWalkthrough ? walkthroughDownstream : givenDownstream
// the walkthrough's public registry is new, so it has no topic yet
var existingUpstreamTopic = !deployWalkthrough && !empty(upstreamSystemTopicName)

resource rg 'Microsoft.Resources/resourceGroups@2025-04-01' = {
  name: gateResourceGroupName
  location: location
  tags: tags
}

resource walkthroughRg 'Microsoft.Resources/resourceGroups@2025-04-01' = if (deployWalkthrough) {
  name: walkthroughResourceGroupName
  location: location
  tags: tags
}

module identity 'core/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-gate-${token}'
    location: location
    tags: tags
  }
}

// The identity validation runs execute as: the gate attaches it to each validation taskRun (a
// plain quick run has no identity, and a taskRun takes only a user-assigned one:
// learn.microsoft.com/azure/container-registry/container-registry-task-run-template). It pulls
// the candidate from upstream and reads upstream credentials from the vault, nothing else.
module runnerIdentity 'core/identity.bicep' = {
  name: 'runner-identity'
  scope: rg
  params: {
    name: 'id-runner-${token}'
    location: location
    tags: tags
  }
}

module monitoring 'core/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    workspaceName: 'log-${token}'
    applicationInsightsName: 'appi-${token}'
    location: location
    tags: tags
    actionGroupId: alertActionGroupId
    // the dead-letter alert watches the upstream system topic (created first by its module)
    deadLetterTopicId: hasUpstream ? resourceId(upstream.subscriptionId, upstream.resourceGroup, 'Microsoft.EventGrid/systemTopics', upstreamTopic!.outputs.name) : ''
    // the foreign-secret-read alert leaves out these two callers (not a grant)
    gatePrincipalId: identity.outputs.principalId
    runnerPrincipalId: runnerIdentity.outputs.principalId
  }
}

module storage 'core/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${token}'
    location: location
    tags: tags
    containerNames: [
      deploymentContainer
      logContainer
      deadLetterContainer
    ]
    queueNames: queueNames
    tableNames: [
      ledgerTable
    ]
  }
}

module keyVault 'core/keyvault.bicep' = {
  name: 'key-vault'
  scope: rg
  params: {
    name: 'kv-${token}'
    location: location
    tags: tags
    workspaceId: monitoring.outputs.workspaceId
  }
}

// The registry validations execute on. It is the gate's own, not base-artifacts: a run can push
// to the registry it runs on, and the candidate under test must not be able to reach the
// registry applications build from. It has no identity of its own: runs use the runner identity.
module runner 'core/registry.bicep' = {
  name: 'runner-registry'
  scope: rg
  params: {
    name: 'gaterunner${token}'
    location: location
    tags: tags
    sku: registrySku
  }
}

module functionApp 'app/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    name: 'func-gate-${token}'
    planName: 'plan-gate-${token}'
    location: location
    tags: union(tags, {
      'azd-service-name': 'gate'
    })
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainer
    applicationInsightsName: monitoring.outputs.name
    appSettings: appSettings
    pythonVersion: pythonVersion
    maximumInstanceCount: maximumInstanceCount
    queueBatchSize: queueBatchSize
    queueNewBatchThreshold: queueNewBatchThreshold
    alwaysReady: alwaysReady
    authClientId: authClientId
    authTenantId: authTenantId
    authApplicationIdUri: authApplicationIdUri
  }
}

module walkthrough 'walkthrough/walkthrough.bicep' = if (deployWalkthrough) {
  name: 'walkthrough'
  scope: walkthroughRg
  params: {
    location: location
    tags: tags
    publicRegistryName: publicRegistryName
    baseArtifactsRegistryName: baseArtifactsRegistryName
    teamRegistryName: teamRegistryName
    registrySku: registrySku
    // per-repository push grants are evaluated only in ABAC mode
    baseArtifactsRoleAssignmentMode: pushMode ? 'AbacRepositoryPermissions' : 'LegacyRegistryPermissions'
    helloWorldContextUrl: helloWorldContextUrl
  }
}

module upstreamTopic 'app/upstream-topic.bicep' = if (hasUpstream) {
  name: 'upstream-topic'
  scope: resourceGroup(upstream.subscriptionId, upstream.resourceGroup)
  params: {
    registryName: upstream.name
    topicName: existingUpstreamTopic ? upstreamSystemTopicName : 'evgt-${upstream.name}'
    existingTopic: existingUpstreamTopic
    tags: tags
  }
  dependsOn: [
    walkthrough
  ]
}

// the topic's delivery failures into the workspace (a module of its own: monitoring waits for the
// topic, so the topic cannot wait for monitoring's workspace)
module upstreamTopicDiagnostics 'app/upstream-topic-diagnostics.bicep' = if (hasUpstream) {
  name: 'upstream-topic-diagnostics'
  scope: resourceGroup(upstream.subscriptionId, upstream.resourceGroup)
  params: {
    topicName: upstreamTopic!.outputs.name
    workspaceId: monitoring.outputs.workspaceId
  }
}

module gateAccess 'rbac/gate-access.bicep' = {
  name: 'gate-access'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.name
    keyVaultName: keyVault.outputs.name
    attestationKeyName: keyVault.outputs.attestationKeyName
    deadLetterContainerName: deadLetterContainer
    appPrincipalId: identity.outputs.principalId
    runnerIdentityName: runnerIdentity.outputs.name
    runnerPrincipalId: runnerIdentity.outputs.principalId
    runnerSecretNames: runnerSecretNames
    topicPrincipalId: hasUpstream ? upstreamTopic!.outputs.principalId : ''
  }
}

// upstream: the gate resolves tags and imports from it (the import documentation's role for the
// source registry), validation runs pull the candidate with the runner identity (pull only)
module upstreamAccess 'rbac/registry-access.bicep' = if (hasUpstream) {
  name: 'upstream-access'
  scope: resourceGroup(upstream.subscriptionId, upstream.resourceGroup)
  params: {
    registryName: upstream.name
    workspaceId: monitoring.outputs.workspaceId
    grants: [
      {
        principalId: identity.outputs.principalId
        role: 'importer'
      }
      {
        principalId: runnerIdentity.outputs.principalId
        role: 'puller'
      }
    ]
  }
  dependsOn: [
    walkthrough
  ]
}

var helloWorldGrants = deployWalkthrough ? [ { principalId: walkthrough!.outputs.helloWorldPrincipalId, role: 'puller' } ] : []

// base-artifacts: the gate imports into it and locks run-ID tags (in push mode it pushes into
// the promoted repositories only); in the walkthrough the hello-world task also pulls its base
// image from it
module baseAccess 'rbac/registry-access.bicep' = {
  name: 'base-artifacts-access'
  scope: resourceGroup(base.subscriptionId, base.resourceGroup)
  params: {
    registryName: base.name
    workspaceId: monitoring.outputs.workspaceId
    grants: concat(
      [
        {
          principalId: identity.outputs.principalId
          role: 'importer'
        }
        {
          principalId: identity.outputs.principalId
          role: 'tagLock'
        }
      ],
      helloWorldGrants
    )
    pushGrants: pushMode ? [ { principalId: identity.outputs.principalId, repositories: promotedRepositories } ] : []
  }
  dependsOn: [
    walkthrough
  ]
}

// the runner: the gate creates and follows validation task runs on it
module runnerAccess 'rbac/registry-access.bicep' = {
  name: 'runner-access'
  scope: rg
  params: {
    registryName: runner.outputs.name
    workspaceId: monitoring.outputs.workspaceId
    grants: [
      {
        principalId: identity.outputs.principalId
        role: 'runner'
      }
    ]
  }
}

// downstream: after a promotion the gate runs the team registry's tasks (the walkthrough's
// hello-world) itself
module downstreamAccess 'rbac/registry-access.bicep' = if (hasDownstream) {
  name: 'downstream-access'
  scope: resourceGroup(downstream.subscriptionId, downstream.resourceGroup)
  params: {
    registryName: downstream.name
    workspaceId: monitoring.outputs.workspaceId
    grants: [
      {
        principalId: identity.outputs.principalId
        role: 'downstream'
      }
    ]
  }
  dependsOn: [
    walkthrough
  ]
}

module pushSubscription 'app/push-subscription.bicep' = if (hasUpstream && subscribeToEvents) {
  name: 'push-subscription'
  scope: resourceGroup(upstream.subscriptionId, upstream.resourceGroup)
  params: {
    topicName: upstreamTopic!.outputs.name
    functionAppId: functionApp.outputs.id
    functionName: eventFunctionName
    repositories: watchedRepositories
    deadLetterStorageId: storage.outputs.id
    deadLetterContainerName: deadLetterContainer
  }
  dependsOn: [
    gateAccess
  ]
}

// What gate.yaml's azure: section and registries need (docs/deploy.md).
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_SUBSCRIPTION_ID string = subscription().subscriptionId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_URL string = functionApp.outputs.uri
// what an operator asks a token for (docs/guide/functions.md, "Who may call the API"); empty: no sign-in
// the postdeploy hook proves the deployed API refuses unauthenticated and forged calls when true
output AZURE_GATE_AUTH_ENABLED bool = !empty(authClientId)
output AZURE_GATE_AUTH_RESOURCE string = empty(authClientId) ? '' : (empty(authApplicationIdUri) ? 'api://${authClientId}' : authApplicationIdUri)
output AZURE_GATE_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_KEY_VAULT_URL string = keyVault.outputs.uri
output AZURE_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output AZURE_LEDGER_TABLE string = ledgerTable
output AZURE_LOG_CONTAINER string = logContainer
output AZURE_RUNNER_REGISTRY_NAME string = runner.outputs.name
output AZURE_RUNNER_REGISTRY_RESOURCE_GROUP string = rg.name
output AZURE_BASE_REGISTRY_NAME string = base.name
output AZURE_BASE_REGISTRY_RESOURCE_GROUP string = base.resourceGroup
output AZURE_BASE_REGISTRY_LOGIN_SERVER string = baseAccess.outputs.loginServer
output AZURE_UPSTREAM_REGISTRY_ID string = hasUpstream ? upstreamAccess!.outputs.id : ''
output AZURE_UPSTREAM_LOGIN_SERVER string = hasUpstream ? upstreamAccess!.outputs.loginServer : ''
output AZURE_TEAM_REGISTRY_NAME string = deployWalkthrough ? walkthrough!.outputs.teamRegistryName : ''
output AZURE_SUBSCRIBED_TO_EVENTS bool = hasUpstream && subscribeToEvents
// false when the upstream's existing system topic is used: teardown must leave it
output AZURE_UPSTREAM_TOPIC_CREATED bool = hasUpstream && upstreamTopic!.outputs.created
output AZURE_AUDIT_WORKBOOK_ID string = monitoring.outputs.workbookId
// Where the app reads gate.yaml (relative to the app folder): the predeploy hook checks that file.
output GATE_CONFIG string = appSettings.GATE_CONFIG
// The settings gate.yaml reads, under the same names as in the Function app.
output GATE_SUBSCRIPTION_ID string = appSettings.GATE_SUBSCRIPTION_ID
output GATE_PROMOTE_MODE string = appSettings.GATE_PROMOTE_MODE
output GATE_REGISTRY_NAME string = appSettings.GATE_REGISTRY_NAME
output GATE_REGISTRY_RESOURCE_GROUP string = appSettings.GATE_REGISTRY_RESOURCE_GROUP
output GATE_REGISTRY_LOGIN_SERVER string = appSettings.GATE_REGISTRY_LOGIN_SERVER
output GATE_RUNNER_REGISTRY_NAME string = appSettings.GATE_RUNNER_REGISTRY_NAME
output GATE_RUNNER_RESOURCE_GROUP string = appSettings.GATE_RUNNER_RESOURCE_GROUP
output GATE_RUNNER_IDENTITY_RESOURCE_ID string = appSettings.GATE_RUNNER_IDENTITY_RESOURCE_ID
output GATE_RUNNER_IDENTITY_CLIENT_ID string = appSettings.GATE_RUNNER_IDENTITY_CLIENT_ID
output GATE_KEY_VAULT_URL string = appSettings.GATE_KEY_VAULT_URL
output GATE_TABLE_ENDPOINT string = appSettings.GATE_TABLE_ENDPOINT
output GATE_UPSTREAM_LOGIN_SERVER string = appSettings.GATE_UPSTREAM_LOGIN_SERVER
output GATE_UPSTREAM_REGISTRY_ID string = appSettings.GATE_UPSTREAM_REGISTRY_ID
output GATE_DOWNSTREAM_REGISTRY string = appSettings.GATE_DOWNSTREAM_REGISTRY
output GATE_DOWNSTREAM_RESOURCE_GROUP string = appSettings.GATE_DOWNSTREAM_RESOURCE_GROUP
