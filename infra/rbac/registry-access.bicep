// Grants on one container registry, deployed into that registry's resource group.
//
// ACR has no built-in role that is exactly "import and lock tags" or "schedule and follow quick
// runs": Contributor can do both and much more (delete the registry, change its network rules),
// and Container Registry Tasks Contributor also creates and edits tasks. So the gate gets custom
// roles with exactly the operations it calls, defined in this resource group and assignable only
// here, one set per registry (a role's name must be unique in the tenant).
//
// Registries authorize data-plane calls in one of two modes: "RBAC Registry Permissions" checks
// actions (…/pull/read, …/metadata/write), "RBAC Registry + ABAC Repository Permissions" checks
// data actions (…/repositories/content/read, …) and ignores AcrPull/AcrPush. Each role below has
// both forms, so it works whichever mode the registry is in. Wildcards are not used: ACR does not
// honour them in custom roles.

@description('Name of the registry (in this resource group) the grants are on.')
param registryName string

@description('Who gets which role: [{principalId, role}], role one of reader, importer, runner.')
param grants array

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

var permissions = {
  // reader: the upstream registry (the gate resolves tags and imports by resource id; the
  // runner's quick runs pull the candidate) and, in the walkthrough, base-artifacts for the
  // hello-world task. AcrPull alone is not enough: importing from an ACR by resource id asks for
  // read access to the source registry resource, and AcrPull is ignored in ABAC mode.
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
  // write locks the run-ID tag (writeEnabled/deleteEnabled false). No push: content arrives only
  // through import, so a stolen token of the gate cannot push an unvalidated image.
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
  // runner: the registry quick runs execute on. Upload the validation folder, schedule the run,
  // follow it, fetch its log, cancel it past the deadline. Nothing to create or edit tasks.
  runner: {
    actions: [
      'Microsoft.ContainerRegistry/registries/listBuildSourceUploadUrl/action'
      'Microsoft.ContainerRegistry/registries/scheduleRun/action'
      'Microsoft.ContainerRegistry/registries/runs/read'
      'Microsoft.ContainerRegistry/registries/runs/listLogSasUrl/action'
      'Microsoft.ContainerRegistry/registries/runs/cancel/action'
    ]
    dataActions: []
  }
}

var descriptions = {
  reader: 'Gated import: read and pull from this registry (tags, manifests, blobs).'
  importer: 'Gated import: import validated digests into this registry and lock run-ID tags.'
  runner: 'Gated import: run validation quick runs on this registry and read their logs.'
}

// the role kinds these grants use, each once
var kinds = union(map(grants, grant => grant.role), [])

var roleGuids = {
  reader: guid(registry.id, 'gated-import', 'reader')
  importer: guid(registry.id, 'gated-import', 'importer')
  runner: guid(registry.id, 'gated-import', 'runner')
}

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

output id string = registry.id
output name string = registry.name
output loginServer string = registry.properties.loginServer
output location string = registry.location
