// Grants on one container registry, deployed into that registry's resource group.
//
// ACR has no built-in role that is exactly "import and lock tags", "run validations" or "run one
// downstream task": Contributor can do all and much more (delete the registry, change its network
// rules), and Container Registry Tasks Contributor also creates and edits tasks. So the gate gets
// custom roles with exactly the operations it calls, defined in this resource group and assignable
// only here, one set per registry (a role's name must be unique in the tenant). Operation names:
// learn.microsoft.com/azure/role-based-access-control/permissions/containers
// (Microsoft.ContainerRegistry).
//
// Registries authorize data-plane calls in one of two modes: "RBAC Registry Permissions" checks
// actions (…/pull/read, …/metadata/write), "RBAC Registry + ABAC Repository Permissions" checks
// data actions (…/repositories/content/read, …) and ignores AcrPull/AcrPush. Each role below has
// both forms, so it works whichever mode the registry is in. Wildcards are not used: ACR does not
// honour them in custom roles.
//
// pushGrants (promote mode "push" only) use the built-in Container Registry Repository Writer
// with a condition on the repository name, so the gate may push to the gated repositories and no
// other. ACR evaluates such conditions only in "RBAC Registry + ABAC Repository Permissions" mode
// (learn.microsoft.com/azure/container-registry/container-registry-rbac-abac-repository-permissions).

@description('Name of the registry (in this resource group) the grants are on.')
param registryName string

@description('Who gets which custom role: [{principalId, role}], role one of reader, importer, runner, downstream.')
param grants array = []

@description('Who may push to which repositories (promote mode push): [{principalId, repositories: [names]}].')
param pushGrants array = []

@description('Resource id of the Log Analytics workspace the registry\'s login and repository events go to; empty: none.')
param workspaceId string = ''

resource registry 'Microsoft.ContainerRegistry/registries@2025-11-01' existing = {
  name: registryName
}

var permissions = {
  // reader: the upstream registry (the gate resolves tags and imports by resource id;
  // validation runs pull the candidate with the runner identity) and, in the walkthrough,
  // base-artifacts for the hello-world task. AcrPull alone is not enough: importing from an ACR
  // by resource id asks for read access to the source registry resource, and AcrPull is ignored
  // in ABAC mode.
  reader: {
    actions: [
      'Microsoft.ContainerRegistry/registries/read'
      'Microsoft.ContainerRegistry/registries/pull/read'
      'Microsoft.ContainerRegistry/registries/metadata/read'
    ]
    dataActions: [
      'Microsoft.ContainerRegistry/registries/repositories/content/read'
      'Microsoft.ContainerRegistry/registries/repositories/metadata/read'
    ]
  }
  // importer: base-artifacts. importImage copies the validated digest in (run-ID tag, then stable
  // tag; a rollback imports from this registry itself); the reads find existing tags; metadata
  // write locks the run-ID tag (writeEnabled/deleteEnabled false). No push: in import mode
  // content arrives only through import, so a stolen token of the gate cannot push an
  // unvalidated image; push mode adds pushGrants below, limited to the promoted repositories.
  importer: {
    actions: [
      'Microsoft.ContainerRegistry/registries/read'
      'Microsoft.ContainerRegistry/registries/importImage/action'
      'Microsoft.ContainerRegistry/registries/pull/read'
      'Microsoft.ContainerRegistry/registries/metadata/read'
      'Microsoft.ContainerRegistry/registries/metadata/write'
    ]
    dataActions: [
      'Microsoft.ContainerRegistry/registries/repositories/content/read'
      'Microsoft.ContainerRegistry/registries/repositories/metadata/read'
      'Microsoft.ContainerRegistry/registries/repositories/metadata/write'
    ]
  }
  // runner: the registry validations execute on. Upload the validation folder, create one
  // taskRun per validation (the resource that carries the runner's user-assigned identity; a
  // plain quick run has none, so the gate no longer schedules any), poll its creation (a
  // long-running PUT), read it back when a worker resumes, delete it afterwards; follow the run
  // (also one a worker started before taskRuns), fetch its log, cancel it past the deadline. Not
  // taskruns/listDetails/action, which returns the run request's secrets the gate never reads
  // back, and nothing to create or edit tasks.
  runner: {
    actions: [
      'Microsoft.ContainerRegistry/registries/listBuildSourceUploadUrl/action'
      'Microsoft.ContainerRegistry/registries/taskruns/write'
      'Microsoft.ContainerRegistry/registries/taskruns/read'
      'Microsoft.ContainerRegistry/registries/taskruns/delete'
      'Microsoft.ContainerRegistry/registries/taskruns/operationStatuses/read'
      'Microsoft.ContainerRegistry/registries/runs/read'
      'Microsoft.ContainerRegistry/registries/runs/listLogSasUrl/action'
      'Microsoft.ContainerRegistry/registries/runs/cancel/action'
    ]
    dataActions: []
  }
  // downstream: a team registry whose tasks rebuild on a promoted base image. After a promotion
  // the gate queues a run of each itself (scheduleRun with a TaskRunRequest naming the task)
  // rather than rely on a base-image trigger firing after an import, which no document
  // promises; it does not follow the run. tasks/read because the request names an existing
  // task (whether ACR checks it is not documented). Nothing to edit tasks or touch content.
  downstream: {
    actions: [
      'Microsoft.ContainerRegistry/registries/tasks/read'
      'Microsoft.ContainerRegistry/registries/scheduleRun/action'
    ]
    dataActions: []
  }
}

var descriptions = {
  reader: 'Gated import: read and pull from this registry (tags, manifests, blobs).'
  importer: 'Gated import: import validated digests into this registry and lock run-ID tags.'
  runner: 'Gated import: run validations (task runs) on this registry and read their logs.'
  downstream: 'Gated import: queue runs of this registry\'s tasks after a promotion.'
}

// the role kinds these grants use, each once
var kinds = union(map(grants, grant => grant.role), [])

var roleGuids = {
  reader: guid(registry.id, 'gated-import', 'reader')
  importer: guid(registry.id, 'gated-import', 'importer')
  runner: guid(registry.id, 'gated-import', 'runner')
  downstream: guid(registry.id, 'gated-import', 'downstream')
}

var builtInRoles = {
  repositoryWriter: '2a1e307c-b015-4ebd-883e-5b7698a07328' // Container Registry Repository Writer
}

// The data actions of Container Registry Repository Writer; the condition lets each of them only
// on the named repositories (the form of the condition the ABAC article gives, with an OR per
// repository).
var writerDataActions = [
  'Microsoft.ContainerRegistry/registries/repositories/content/read'
  'Microsoft.ContainerRegistry/registries/repositories/content/write'
  'Microsoft.ContainerRegistry/registries/repositories/metadata/read'
  'Microsoft.ContainerRegistry/registries/repositories/metadata/write'
]
var actionGuard = join(map(writerDataActions, action => '!(ActionMatches{\'${action}\'})'), ' AND ')
var repositoryIs = '@Request[Microsoft.ContainerRegistry/registries/repositories:name] StringEqualsIgnoreCase \'{0}\''

resource definitions 'Microsoft.Authorization/roleDefinitions@2022-04-01' = [
  for kind in kinds: {
    name: roleGuids[kind]
    properties: {
      roleName: 'Gated import ${kind} (${registryName} ${uniqueString(registry.id)})'
      description: descriptions[kind]
      type: 'customRole'
      permissions: [
        {
          actions: permissions[kind].actions
          notActions: []
          dataActions: permissions[kind].dataActions
          notDataActions: []
        }
      ]
      assignableScopes: [
        resourceGroup().id
      ]
    }
  }
]

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for grant in grants: {
    name: guid(registry.id, grant.principalId, roleGuids[grant.role])
    scope: registry
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleGuids[grant.role])
      principalId: grant.principalId
      principalType: 'ServicePrincipal'
    }
    dependsOn: [
      definitions
    ]
  }
]

// promote mode push: the Repository Writer role, only on the listed repositories
resource pushAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for grant in pushGrants: {
    name: guid(registry.id, grant.principalId, builtInRoles.repositoryWriter)
    scope: registry
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.repositoryWriter)
      principalId: grant.principalId
      principalType: 'ServicePrincipal'
      conditionVersion: '2.0'
      condition: format('(({0}) OR ({1}))', actionGuard, join(map(grant.repositories, repository => format(repositoryIs, repository)), ' OR '))
    }
  }
]

// Diagnostic settings are an extension resource (`scope:` the resource they watch), type and
// properties as in Bicep's types for Microsoft.Insights/diagnosticSettings@2021-05-01-preview
// (Azure/bicep-types-az, generated/monitor/microsoft.insights/2021-05-01-preview/types.md).
// logAnalyticsDestinationType 'Dedicated' writes each category to its own resource-specific table
// instead of AzureDiagnostics (same types.md: "Possible values are: Dedicated and null").
//
// Here because every registry the gate touches gets this module (upstream, base-artifacts,
// runner, downstream; in the walkthrough those are its registries): who logged in to the
// registry and every push, pull, tag and delete, categories ContainerRegistryLoginEvents and
// ContainerRegistryRepositoryEvents, tables of the same names
// (learn.microsoft.com/azure/azure-monitor/reference/supported-logs/
// microsoft-containerregistry-registries-logs).
resource registryEvents 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(workspaceId)) {
  name: 'gate-audit'
  scope: registry
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'ContainerRegistryLoginEvents'
        enabled: true
      }
      {
        category: 'ContainerRegistryRepositoryEvents'
        enabled: true
      }
    ]
  }
}

output id string = registry.id
output name string = registry.name
output loginServer string = registry.properties.loginServer
output location string = registry.location
