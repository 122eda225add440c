// The upstream registry's Event Grid system topic, in that registry's resource group. Its system
// identity is what writes undeliverable events to the dead-letter container.
//
// A registry has at most one system topic. If it already has one (existingTopic), the topic is
// someone else's: it is only referenced (`existing`), never PUT, so its identity, tags and other
// subscriptions stay as they are, and teardown must not delete it. Only when there is none does
// this module create the gate's own topic. Either way the outputs name the topic and the principal
// of its system-assigned identity, which gate-access.bicep lets write to the dead-letter container.
//
// `existingTopic ? found… : created…` compiles to ARM's if(), which evaluates only the branch the
// condition picks ("When the condition is True, only the true value is evaluated ... you can
// reference a resource that exists under one condition but not under the other":
// learn.microsoft.com/azure/azure-resource-manager/templates/template-functions-logical#if), so
// the existing topic is read only when it exists and the created one only when it was created.

@description('Name of the upstream registry (in this resource group).')
param registryName string

@description('Name of the system topic: the registry\'s existing one (existingTopic), or the one to create.')
param topicName string

@description('True: the registry already has this system topic; reference it and change nothing. It must have a system-assigned identity (dead-lettering writes with it; docs/deploy.md).')
param existingTopic bool = false

param tags object = {}

resource registry 'Microsoft.ContainerRegistry/registries@2025-11-01' existing = {
  name: registryName
}

resource created 'Microsoft.EventGrid/systemTopics@2025-02-15' = if (!existingTopic) {
  name: topicName
  location: registry.location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: registry.id
    topicType: 'Microsoft.ContainerRegistry.Registries'
  }
}

// an `existing` reference deploys nothing, so it may share the created topic's name (Bicep skips
// existing resources in its duplicate-name check: Azure/bicep, EmitLimitationCalculator)
resource found 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: topicName
}

output name string = topicName
output created bool = !existingTopic
// An existing topic without a system identity has no identity.principalId: the deployment then
// fails on this expression rather than subscribe without a working dead-letter destination
// (docs/deploy.md says how to turn the identity on).
output principalId string = existingTopic ? found.identity.principalId : created!.identity.principalId
