// The walkthrough environment (main.bicep's deployWalkthrough): the three registries of the
// original ACR walkthrough, here in one resource group so that one delete removes them,
//   public         the simulated public registry (the gate's upstream; Event Grid source),
//   base-artifacts the company's registry of gated base images (the gate's import target),
//   team           the application team's registry, with the downstream hello-world task,
// and that task, which rebuilds hello-world on the stable tag in base-artifacts (the gate runs it
// after each promotion; see hello-world.bicep). The gate itself (Function app, runner registry
// and identity, Key Vault, storage) is in main.bicep.

param location string
param tags object = {}

param publicRegistryName string
param baseArtifactsRegistryName string
param teamRegistryName string

@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param registrySku string = 'Basic'

@description('Role assignment permissions mode of base-artifacts (AbacRepositoryPermissions for per-repository push grants).')
@allowed([
  'LegacyRegistryPermissions'
  'AbacRepositoryPermissions'
])
param baseArtifactsRoleAssignmentMode string = 'LegacyRegistryPermissions'

@description('Build context of hello-world: a public Git repository (URL#branch) with its Dockerfile.')
param helloWorldContextUrl string

module publicRegistry '../core/registry.bicep' = {
  name: 'walkthrough-public'
  params: {
    name: publicRegistryName
    location: location
    tags: tags
    sku: registrySku
  }
}

module baseArtifacts '../core/registry.bicep' = {
  name: 'walkthrough-base-artifacts'
  params: {
    name: baseArtifactsRegistryName
    location: location
    tags: tags
    sku: registrySku
    roleAssignmentMode: baseArtifactsRoleAssignmentMode
  }
}

module team '../core/registry.bicep' = {
  name: 'walkthrough-team'
  params: {
    name: teamRegistryName
    location: location
    tags: tags
    sku: registrySku
  }
}

module helloWorld 'hello-world.bicep' = {
  name: 'walkthrough-hello-world'
  params: {
    registryName: team.outputs.name
    location: location
    tags: tags
    baseImageRegistry: baseArtifacts.outputs.loginServer
    contextUrl: helloWorldContextUrl
  }
}

output publicRegistryId string = publicRegistry.outputs.id
output publicLoginServer string = publicRegistry.outputs.loginServer
output baseArtifactsRegistryId string = baseArtifacts.outputs.id
output baseArtifactsLoginServer string = baseArtifacts.outputs.loginServer
output teamRegistryName string = team.outputs.name
output teamLoginServer string = team.outputs.loginServer
output helloWorldPrincipalId string = helloWorld.outputs.principalId
