// One Azure Container Registry: the gate's runner and the walkthrough's three registries.
// The admin user and anonymous pull stay off; callers authenticate with Entra ID.

@description('Registry name (5-50 letters and digits, globally unique).')
param name string

param location string
param tags object = {}

@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param sku string = 'Basic'

// "RBAC Registry Permissions" (LegacyRegistryPermissions) honours AcrPull/AcrPush and registry
// actions; "RBAC Registry + ABAC Repository Permissions" (AbacRepositoryPermissions) honours data
// actions and role assignments conditioned on the repository name, which is what lets a grant
// cover only some repositories (learn.microsoft.com/azure/container-registry/
// container-registry-rbac-abac-repository-permissions). The property exists in the stable
// 2025-11-01 api-version used here (the api-version of the importImage the gate calls).
@description('Role assignment permissions mode: AbacRepositoryPermissions allows grants conditioned on repositories.')
@allowed([
  'LegacyRegistryPermissions'
  'AbacRepositoryPermissions'
])
param roleAssignmentMode string = 'LegacyRegistryPermissions'

resource registry 'Microsoft.ContainerRegistry/registries@2025-11-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
    roleAssignmentMode: roleAssignmentMode
  }
}

output id string = registry.id
output name string = registry.name
output loginServer string = registry.properties.loginServer
