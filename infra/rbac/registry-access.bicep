// Grants on one container registry, deployed into that registry's resource group.
//
// Built-in roles where one is enough, custom roles only where none is narrow enough:
// - importer (built-in Container Registry Data Importer and Data Reader): ACR's import
//   documentation names this role for both ends of an import from an ACR, "assigned on the source
//   registry" to view and pull, and "assigned on the target registry" to read and trigger imports
//   (learn.microsoft.com/azure/container-registry/container-registry-import-images, "Import from
//   an Azure container registry in the same AD tenant"). Its operations (built-in roles reference,
//   learn.microsoft.com/azure/role-based-access-control/built-in-roles/containers): actions
//   registries/importImage/action, registries/read, registries/pull/read; data actions
//   repositories/content/read, repositories/metadata/read, catalog/read. It cannot push. On the
//   upstream it also carries importImage/action, which the gate never uses there.
// - puller (built-in AcrPull and Container Registry Repository Reader): who only pulls (the
//   runner identity's validation runs; the walkthrough's hello-world task). AcrPull is the
//   action registries/pull/read that "RBAC Registry Permissions" mode checks; Repository Reader
//   the data actions repositories/content/read and metadata/read that "RBAC Registry + ABAC
//   Repository Permissions" mode checks, where AcrPull is ignored
//   (learn.microsoft.com/azure/container-registry/container-registry-rbac-abac-repository-permissions).
//   Not the importer role: a validation run's identity is usable by the candidate under test, which
//   must not be able to import into the upstream.
// - tagLock (custom): the gate locks each run-ID tag (writeEnabled/deleteEnabled false), which
//   takes metadata write; every built-in role with it also writes content (AcrPush, Container
//   Registry Repository Writer) or much more (Contributor).
// - runner (custom): create, follow, cancel and delete task runs; Container Registry Tasks
//   Contributor also creates and edits tasks and lists their secrets (listDetails).
// - downstream (custom): queue runs of existing tasks; the same built-in is again too broad.
// Custom roles are defined in this resource group and assignable only here, one set per registry (a
// role's name must be unique in the tenant). Operation names:
// learn.microsoft.com/azure/role-based-access-control/permissions/containers. Each custom role
// has both the actions and the data actions of its operations, so it works whichever mode the
// registry is in. Wildcards are not used: ACR does not honour them in custom roles.
//
// Role data propagates: "When you assign roles or remove role assignments, it can take up to 10
// minutes for changes to take effect" (Azure Resource Manager caches them: learn.microsoft.com/
// azure/role-based-access-control/troubleshooting, "Role assignment changes are not being
// detected"). The page says it of assignments; that a custom role created in the same deployment
// can be unknown for a while where its assignment is evaluated is our reading of reported
// failures, not a documented statement. So each assignment waits for its definitions (dependsOn)
// and names its principal type (which avoids PrincipalNotFound for a just-created identity, same
// page, "Assigning a role to a new principal sometimes fails"); if a first deployment still fails
// on a just-created role, running it again is safe (every name is deterministic) and is the
// remedy docs/deploy.md gives. Built-in roles need no definition, one reason to prefer them.
//
// pushGrants (promote mode "push" only) use the built-in Container Registry Repository Writer
// with a condition on the repository name, so the gate may push to the gated repositories and no
// other. ACR evaluates such conditions only in "RBAC Registry + ABAC Repository Permissions" mode
// (learn.microsoft.com/azure/container-registry/container-registry-rbac-abac-repository-permissions).

@description('Name of the registry (in this resource group) the grants are on.')
param registryName string

@description('Who gets which role: [{principalId, role}], role one of importer, puller (built-in) or tagLock, runner, downstream (custom).')
param grants array = []

@description('Who may push to which repositories (promote mode push): [{principalId, repositories: [names]}].')
param pushGrants array = []

@description('Resource id of the Log Analytics workspace the registry\'s login and repository events go to; empty: none.')
param workspaceId string = ''

resource registry 'Microsoft.ContainerRegistry/registries@2025-11-01' existing = {
  name: registryName
}

var permissions = {
  // tagLock: base-artifacts. After importing a validated digest the gate locks its run-ID tag
  // (writeEnabled/deleteEnabled false), and reads the tag's attributes back. No content write: in
  // import mode content arrives only through import, so a stolen token of the gate cannot push an
  // unvalidated image; push mode adds pushGrants below, limited to the promoted repositories.
  tagLock: {
    actions: [
      'Microsoft.ContainerRegistry/registries/metadata/read'
      'Microsoft.ContainerRegistry/registries/metadata/write'
    ]
    dataActions: [
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
  tagLock: 'Gated import: lock the run-ID tags of validated digests in this registry.'
  runner: 'Gated import: run validations (task runs) on this registry and read their logs.'
  downstream: 'Gated import: queue runs of this registry\'s tasks after a promotion.'
}

// Built-in role ids as in the built-in roles reference
// (learn.microsoft.com/azure/role-based-access-control/built-in-roles/containers)
var builtInRoles = {
  dataImporter: '577a9874-89fd-4f24-9dbd-b5034d0ad23a' // Container Registry Data Importer and Data Reader
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d' // AcrPull
  repositoryReader: 'b93aa761-3e63-49ed-ac28-beffa264f7ac' // Container Registry Repository Reader
  repositoryWriter: '2a1e307c-b015-4ebd-883e-5b7698a07328' // Container Registry Repository Writer
}

// the built-in roles each built-in grant kind assigns
var builtInKinds = {
  importer: [
    builtInRoles.dataImporter
  ]
  puller: [
    builtInRoles.acrPull
    builtInRoles.repositoryReader
  ]
}

// one (principal, built-in role) per assignment; the rest of the grants are custom roles
var builtInGrants = flatten(map(filter(grants, grant => contains(builtInKinds, grant.role)), grant => map(builtInKinds[grant.role], role => {
  principalId: grant.principalId
  role: role
})))
var customGrants = filter(grants, grant => !contains(builtInKinds, grant.role))

// the custom role kinds these grants use, each once
var kinds = union(map(customGrants, grant => grant.role), [])

var roleGuids = {
  tagLock: guid(registry.id, 'gated-import', 'tagLock')
  runner: guid(registry.id, 'gated-import', 'runner')
  downstream: guid(registry.id, 'gated-import', 'downstream')
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
  for grant in customGrants: {
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

resource builtInAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for grant in builtInGrants: {
    name: guid(registry.id, grant.principalId, grant.role)
    scope: registry
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', grant.role)
      principalId: grant.principalId
      principalType: 'ServicePrincipal'
    }
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
